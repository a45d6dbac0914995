"""Client partitioning: coverage, balance, skew, determinism, errors, and the domain-mix plot."""

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from fedmoe.data.partition import domain_mix, partition, partition_like, plot_partition  # noqa: E402
from fedmoe.data.records import Example  # noqa: E402

DOMAINS = ["biology", "history", "law", "math", "physics"]


def make_examples(n=500, domains=DOMAINS):
    """``n`` distinct examples cycling through ``domains``."""
    return [Example(f"question {i}", f"answer {i}", domain=domains[i % len(domains)]) for i in range(n)]


def placed(parts):
    """The prompts of all partitioned examples, sorted (each appears once per placement)."""
    return sorted(ex.prompt for part in parts for ex in part)


def skew(parts):
    """Mean total-variation distance between each client's domain distribution and the global one."""
    _, counts = domain_mix(parts)
    client = counts / counts.sum(axis=1, keepdims=True)
    overall = counts.sum(axis=0) / counts.sum()
    return float(np.mean(0.5 * np.abs(client - overall).sum(axis=1)))


@pytest.mark.parametrize(
    ("scheme", "kw"),
    [
        ("iid", {}),
        ("dirichlet", {"alpha": 0.3}),
        ("pathological", {"domains_per_client": 5}),
        ("pathological", {"domains_per_client": 3}),
    ],
)
@pytest.mark.parametrize("num_clients", [3, 7])
def test_every_example_in_exactly_one_client(scheme, kw, num_clients):
    examples = make_examples(203)
    parts = partition(examples, num_clients, scheme=scheme, seed=1, **kw)
    assert len(parts) == num_clients
    assert placed(parts) == sorted(ex.prompt for ex in examples)
    assert all(parts)  # min_size=1


def test_iid_sizes_balanced_and_shuffled_by_seed():
    examples = make_examples(103)
    parts = partition(examples, 4, seed=0)
    assert sorted(len(p) for p in parts) == [25, 26, 26, 26]
    assert parts[0] != examples[:26]  # a seeded shuffle, not contiguous slices of the input
    assert partition(examples, 4, seed=0) == parts
    assert partition(examples, 4, seed=1) != parts
    assert skew(partition(make_examples(1000), 5, seed=0)) < 0.1  # IID: every client near the global mix


def test_dirichlet_small_alpha_is_more_skewed_than_large_alpha():
    examples = make_examples(500)
    small = [skew(partition(examples, 5, scheme="dirichlet", alpha=0.1, seed=s)) for s in range(3)]
    large = [skew(partition(examples, 5, scheme="dirichlet", alpha=100.0, seed=s)) for s in range(3)]
    assert min(small) > 0.3 > 0.1 > max(large)


def test_pathological_limits_domains_per_client():
    examples = make_examples(300)
    for num_clients, k in [(10, 2), (5, 1), (3, 3), (4, 2)]:
        parts = partition(examples, num_clients, scheme="pathological", domains_per_client=k, seed=2)
        _, counts = domain_mix(parts)
        assert ((counts > 0).sum(axis=1) <= k).all()
        assert counts.sum(axis=0).tolist() == [60] * 5  # no domain dropped
    parts = partition(examples, 5, scheme="pathological", domains_per_client=1)
    assert sorted({ex.domain for ex in p}.pop() for p in parts) == DOMAINS


def test_partition_by_another_field():
    examples = [
        Example(f"q{i}", "a", domain="d", metric=["rouge_l", "exact_match"][i % 2]) for i in range(40)
    ]
    parts = partition(examples, 2, scheme="pathological", domains_per_client=1, by="metric")
    assert sorted({ex.metric for ex in p}.pop() for p in parts) == ["exact_match", "rouge_l"]


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "pathological"])
def test_deterministic_given_seed(scheme):
    examples = make_examples(200)
    assert partition(examples, 6, scheme=scheme, seed=5) == partition(examples, 6, scheme=scheme, seed=5)


def test_dirichlet_seed_changes_the_split():
    examples = make_examples(200)
    assert partition(examples, 6, scheme="dirichlet", seed=5) != partition(
        examples, 6, scheme="dirichlet", seed=6
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_clients": 11}, "cannot give 11 clients at least 1 example"),
        ({"num_clients": 4, "min_size": 3}, "cannot give 4 clients at least 3 example"),
        ({"num_clients": 2, "scheme": "shards"}, "unknown partition scheme 'shards'"),
        ({"num_clients": 0}, "num_clients must be a positive integer"),
        ({"num_clients": 2, "by": "prompt"}, "cannot partition by 'prompt'"),
        ({"num_clients": 2, "scheme": "dirichlet", "alpha": 0.0}, "alpha must be > 0"),
        (
            {"num_clients": 2, "scheme": "pathological", "domains_per_client": 6},
            r"domains_per_client in 1\.\.5",
        ),
        (
            {"num_clients": 2, "scheme": "pathological", "domains_per_client": 3},
            "cannot cover all 5 domains.*domains_per_client >= 4",
        ),
        ({"num_clients": 8, "scheme": "pathological", "domains_per_client": 2}, "failed: Label"),
    ],
)
def test_impossible_requests_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        partition(make_examples(10), **kwargs)


def test_dirichlet_min_size_unreachable():
    with pytest.raises(ValueError, match="dirichlet partition of 40 examples into 20 clients failed.*Fix"):
        partition(make_examples(40), 20, scheme="dirichlet", alpha=0.01, min_size=2)


def test_domain_mix_counts():
    a, b, c, d = (Example(str(i), "x", domain=dom) for i, dom in enumerate(["x", "y", "x", "y"]))
    domains, counts = domain_mix([[a, b, c], [d], []])
    assert domains == ["x", "y"]
    assert counts.tolist() == [[2, 1], [0, 1], [0, 0]]


def test_plot_partition_returns_figure_and_saves_png(tmp_path):
    parts = partition(make_examples(100), 4, scheme="pathological", domains_per_client=2)
    fig = plot_partition(parts)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == DOMAINS
    assert len(ax.containers) == len(DOMAINS)
    tops = np.sum([[bar.get_height() for bar in container] for container in ax.containers], axis=0)
    assert tops.tolist() == [len(p) for p in parts]  # the stacks add up to each client's size
    fig.savefig(tmp_path / "mix.png")
    assert (tmp_path / "mix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    other = Figure()
    target = other.add_subplot()
    assert plot_partition(parts, ax=target) is other


@pytest.mark.parametrize("scheme, kw", [("iid", {}), ("dirichlet", {"alpha": 0.3}),
                                        ("pathological", {"domains_per_client": 1})])
def test_partition_like_follows_each_clients_domain_mix(scheme, kw):
    train, test = make_examples(400), make_examples(200)
    parts = partition(train, 5, scheme=scheme, seed=1, **kw)
    local = partition_like(test, parts, seed=1)
    assert placed(local) == placed([test])
    _, train_mix = domain_mix(parts)
    _, test_mix = domain_mix(local + [[ex] for ex in test])  # every domain present, same column order
    test_mix = test_mix[: len(local)]
    share = train_mix / train_mix.sum(0, keepdims=True)
    assert np.all(np.abs(test_mix - share * 40) < 1)  # 40 test items per domain, largest-remainder quotas
    assert partition_like(test, parts, seed=1) == local
