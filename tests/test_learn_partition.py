"""``plot_partition`` in a notebook: without ``ax`` its figure is a pyplot figure (so the inline backend shows it);
with ``ax`` it draws there and opens no figure of its own."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from fedmoe.data.partition import partition, plot_partition  # noqa: E402
from fedmoe.data.records import Example  # noqa: E402


def _parts():
    examples = [Example(f"q {i}", f"a {i}", domain=("x", "y", "z")[i % 3]) for i in range(60)]
    return partition(examples, 4, scheme="dirichlet", alpha=0.5, seed=0)


def test_plot_partition_figure_is_registered_with_pyplot():
    fig = plot_partition(_parts())
    try:
        assert isinstance(fig, Figure)
        assert fig.number in plt.get_fignums()
        assert plt.gcf() is fig
    finally:
        plt.close(fig)
    assert fig.number not in plt.get_fignums()


def test_plot_partition_on_a_given_axes_opens_no_pyplot_figure():
    before = plt.get_fignums()
    target = Figure().add_subplot()
    assert plot_partition(_parts(), ax=target) is target.get_figure()
    assert plt.get_fignums() == before
