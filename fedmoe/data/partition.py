"""Split examples among federated clients (IID, Dirichlet, pathological) with flwr-datasets' partitioners.

The partitioners run on an in-memory ``datasets.Dataset`` holding each example's index and its group
(by default the domain), so every example lands in exactly one client and the split is a pure function
of the examples and the seed.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import datasets
import numpy as np
from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner, PathologicalPartitioner
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from fedmoe.data.records import Example

SCHEMES = ("iid", "dirichlet", "pathological")
_GROUP_FIELDS = ("domain", "metric", "label", "answer")


def partition(
    examples: Sequence[Example],
    num_clients: int,
    *,
    scheme: str = "iid",
    alpha: float = 0.5,
    domains_per_client: int = 2,
    by: str = "domain",
    seed: int = 0,
    min_size: int = 1,
) -> list[list[Example]]:
    """Partition ``examples`` into ``num_clients`` disjoint client datasets that together hold every example.

    Schemes:
        ``iid``: a seeded shuffle cut into near-equal shards (sizes differ by at most one).
        ``dirichlet``: each group's examples are split among clients by proportions ~ Dir(alpha); small
            alpha gives skewed clients (flwr-datasets' self-balancing variant, resampled until every
            client holds ``min_size`` examples).
        ``pathological``: each client holds examples of at most ``domains_per_client`` groups
            (McMahan et al.'s split); a group is shared evenly by the clients assigned to it.
    ``by`` names the Example field that defines a group (``domain`` by default).
    """
    if scheme not in SCHEMES:
        raise ValueError(f"unknown partition scheme {scheme!r}; use one of {SCHEMES}")
    if by not in _GROUP_FIELDS:
        raise ValueError(f"cannot partition by {by!r}; use one of the Example fields {_GROUP_FIELDS}")
    if not isinstance(num_clients, int) or num_clients < 1:
        raise ValueError(f"num_clients must be a positive integer, got {num_clients!r}")
    n = len(examples)
    if num_clients * max(min_size, 1) > n:
        raise ValueError(
            f"cannot give {num_clients} clients at least {max(min_size, 1)} example(s) each from {n} examples. "
            "Fix: use fewer clients, a smaller min_size, or more examples"
        )
    groups = [str(getattr(ex, by)) for ex in examples]
    ds = datasets.Dataset.from_dict({"idx": list(range(n)), "group": groups})

    if scheme == "iid":
        partitioner = IidPartitioner(num_partitions=num_clients)
        ds = ds.select(np.random.default_rng(seed).permutation(n))
    elif scheme == "dirichlet":
        if alpha <= 0:
            raise ValueError(f"alpha must be > 0 for a Dirichlet split, got {alpha}")
        partitioner = DirichletPartitioner(
            num_partitions=num_clients,
            partition_by="group",
            alpha=alpha,
            min_partition_size=min_size,
            seed=seed,
        )
    else:
        partitioner = _pathological(num_clients, domains_per_client, sorted(set(groups)), by, seed)
    partitioner.dataset = ds
    try:
        with warnings.catch_warnings():  # Dirichlet resampling chatter; failure after 10 tries raises below
            warnings.filterwarnings(
                "ignore", message="The specified min_partition_size", category=UserWarning
            )
            indices = [partitioner.load_partition(c)["idx"] for c in range(num_clients)]
    except ValueError as err:
        raise ValueError(
            f"{scheme} partition of {n} examples into {num_clients} clients failed: {err} "
            "Fix: use fewer clients, a larger alpha, or a smaller min_size"
        ) from err

    sizes = [len(ix) for ix in indices]
    # Guard the every-example-exactly-once invariant against changes in the library.
    if sorted(i for ix in indices for i in ix) != list(range(n)):
        raise RuntimeError(f"{scheme} partition did not place every example exactly once")
    if min(sizes) < min_size:
        raise ValueError(
            f"the {scheme} partition left a client with {min(sizes)} examples (< min_size={min_size}); sizes "
            f"{sizes}. Fix: use fewer clients or more examples, or lower min_size"
        )
    return [[examples[i] for i in ix] for ix in indices]


def partition_like(examples: Sequence[Example], parts: Sequence[Sequence[Example]], *, seed: int = 0
                   ) -> list[list[Example]]:
    """Split ``examples`` (e.g. a test set) into disjoint client sets that follow the domain mix of ``parts``.

    Domain g's examples go to client c in proportion to c's share of g's examples in ``parts`` (a domain
    absent from ``parts``: in proportion to the clients' sizes), so each client's local test split has its
    training domain mix: IID parts give IID splits, Dirichlet parts the same skew, pathological parts only
    the client's own domains. Quotas are rounded by largest remainder; which examples fill them is seeded.
    A client may get no example when ``examples`` is small.
    """
    domains, counts = domain_mix(parts)
    column = {d: j for j, d in enumerate(domains)}
    sizes = counts.sum(1).astype(np.float64)
    rng = np.random.default_rng(seed)
    out: list[list[Example]] = [[] for _ in parts]
    for domain in sorted({ex.domain for ex in examples}):
        items = [ex for ex in examples if ex.domain == domain]
        weights = counts[:, column[domain]].astype(np.float64) if domain in column else sizes
        raw = len(items) * weights / weights.sum()
        quota = np.floor(raw).astype(np.int64)
        quota[np.argsort(-(raw - quota), kind="stable")[: len(items) - int(quota.sum())]] += 1
        order = rng.permutation(len(items))
        for c, (start, stop) in enumerate(zip(np.cumsum(quota) - quota, np.cumsum(quota), strict=True)):
            out[c].extend(items[i] for i in order[start:stop])
    return out


def _pathological(num_clients: int, k: int, groups: list[str], by: str, seed: int) -> PathologicalPartitioner:
    """A pathological partitioner whose group assignment covers every group (so no example is dropped).

    With at least as many clients as groups, client c gets group c mod G plus k-1 seeded random ones
    ("first-deterministic"); with fewer, client c gets groups c..c+k-1 ("deterministic"), which covers
    all groups only when num_clients + k - 1 >= G.
    """
    num_groups = len(groups)
    if not 1 <= k <= num_groups:
        raise ValueError(
            f"domains_per_client={k} but the examples have {num_groups} {by} value(s) {groups}. "
            f"Fix: use domains_per_client in 1..{num_groups}"
        )
    if num_clients < num_groups and num_clients + k - 1 < num_groups:
        raise ValueError(
            f"{num_clients} clients with {k} {by}(s) each cannot cover all {num_groups} {by}s, so examples "
            f"would be dropped. Fix: use at least {num_groups} clients, or domains_per_client >= "
            f"{num_groups - num_clients + 1}"
        )
    mode = "first-deterministic" if num_clients >= num_groups else "deterministic"
    return PathologicalPartitioner(
        num_partitions=num_clients,
        partition_by="group",
        num_classes_per_partition=k,
        class_assignment_mode=mode,
        seed=seed,
    )


def domain_mix(parts: Sequence[Sequence[Example]]) -> tuple[list[str], np.ndarray]:
    """The sorted domains and a ``[clients, domains]`` integer matrix of how many examples each client holds."""
    domains = sorted({ex.domain for part in parts for ex in part})
    column = {d: j for j, d in enumerate(domains)}
    counts = np.zeros((len(parts), len(domains)), dtype=np.int64)
    for c, part in enumerate(parts):
        for ex in part:
            counts[c, column[ex.domain]] += 1
    return domains, counts


def plot_partition(parts: Sequence[Sequence[Example]], ax: Axes | None = None) -> Figure:
    """A stacked bar per client showing how many examples of each domain it holds; returns ``ax``'s figure.

    Without ``ax`` the figure is made through pyplot, so a notebook's inline backend shows it (a bare
    ``Figure`` never displays); scripts that draw many should ``plt.close(fig)`` when done.
    """
    from matplotlib import pyplot as plt

    domains, counts = domain_mix(parts)
    if ax is None:
        _, ax = plt.subplots(figsize=(max(4.0, 0.5 * len(parts) + 2.5), 3.5), layout="constrained")
    fig = ax.get_figure()
    clients = np.arange(len(parts))
    colors = _colors(len(domains))
    bottom = np.zeros(len(parts))
    for j, domain in enumerate(domains):
        ax.bar(clients, counts[:, j], bottom=bottom, label=domain, color=colors[j], width=0.8)
        bottom += counts[:, j]
    ax.set_xticks(clients, [str(c) for c in clients], fontsize=8 if len(parts) > 20 else 10)
    ax.set_xlabel("client")
    ax.set_ylabel("examples")
    ax.set_title("Domain mix per client")
    ax.legend(title="domain", fontsize=8, title_fontsize=9, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def _colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]
