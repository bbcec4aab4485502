"""What a live run measured: which events a projection applied and when, summarised into
latency percentiles, rates and whether it kept up (see :mod:`.live` for the definitions)."""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field

from eventkit.benchmarks.proj_systems import EVENTKIT
from eventkit.benchmarks.proj_writers import Saved
from eventkit.benchmarks.report import format_ms, format_rate, format_table, percentile


@dataclass(frozen=True)
class LiveResult:
    """One measured row, as written to ``--json``."""

    system: str
    target_per_s: int
    offered_per_s: float
    events_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    kept_up: bool
    #: Seconds from the writers' stop until the last event was applied (None: not kept up).
    drain_s: float | None
    #: Events of the window still unprocessed at the end of the drain; their latencies
    #: count as so far, so the percentiles are lower bounds (``latency_lower_bound``).
    unprocessed: int
    latency_lower_bound: bool
    events: int
    duration_s: float
    #: Whose clock says when an event committed: ``recorded_at`` or the ``writer``'s.
    latency_clock: str
    writers: int
    batch: int
    #: CPU time of the projection's process in the window, in % of one CPU: the writers
    #: are processes of their own, so this is the projection's alone (None: not measured).
    projection_cpu_pct: float | None = None
    #: eventkit's latency in two parts, p99 of each (None: not measured): from the event's
    #: ``recorded_at`` to the follower's read that returned it (the writer's commit, the
    #: log's horizon, the poll) and from that read to the view's commit (the follower's
    #: own work: read-ahead, decoding, handlers, the commit).
    to_read_p99_ms: float | None = None
    read_to_view_p99_ms: float | None = None
    #: Where the machine's CPUs went in the window, each in % of one CPU (None: not
    #: measured): the writer processes, the PostgreSQL server (every process of it: the
    #: writers' and the projection's backends, WAL writer, checkpointer...), and the whole
    #: machine, so that what others ran on it is the rest.
    writers_cpu_pct: float | None = None
    #: eventkit: events per committed batch in the window (a batch's events share one
    #: commit time), which says how much of the follower's work is per batch.
    events_per_batch: float | None = None
    #: The projection process's garbage collections in the window (every thread stops
    #: while one runs): the longest, and all together, in ms.
    gc_max_ms: float | None = None
    gc_total_ms: float | None = None
    server_cpu_pct: float | None = None
    machine_cpu_pct: float | None = None
    suite: str = "live"


@dataclass
class Applied:
    """Which notifications the projection committed, and when (``time.time()``).

    ``committed_at`` is the event's own commit time where the projection knows it
    (eventkit's ``recorded_at``), else empty; ``read_at`` when the follower's read returned
    it (eventkit's :attr:`~projections.follower.BatchReport.read_at`), else empty.
    """

    ids: array[int]
    applied_at: array[float]
    committed_at: array[float]
    read_at: array[float] = field(default_factory=lambda: array("d"))


def summarise(
    system: str,
    rate: int,
    *,
    writers: int,
    batch: int,
    duration_s: float,
    drain_s: float,
    saved: list[Saved],
    applied: Applied,
    window: tuple[float, float],
    stopped_at: float,
) -> tuple[LiveResult, str | None]:
    """Latencies of the events saved in ``window``, the rates, and whether it kept up."""
    end = stopped_at + drain_s
    # What the projection committed after the drain (while stopping) counts as unprocessed.
    applied_at = {i: at for i, at in zip(applied.ids, applied.applied_at, strict=True) if at <= end}
    committed_at = dict(zip(applied.ids, applied.committed_at, strict=False))
    read_at = dict(zip(applied.ids, applied.read_at, strict=False))
    to_read: list[float] = []
    read_to_view: list[float] = []
    latencies: list[float] = []
    writer_clock: list[float] = []
    unprocessed = 0
    events = 0
    written_ids: set[int] = set()
    for sample in saved:
        for at, ids in zip(sample.saved_at, sample.ids, strict=True):
            written_ids.update(ids)
            if not window[0] <= at <= window[1]:
                continue
            events += len(ids)
            for i in ids:
                done = applied_at.get(i)
                if done is None:
                    unprocessed += 1
                    latencies.append(end - committed_at.get(i, at))
                    continue
                latencies.append(done - committed_at.get(i, at))
                writer_clock.append(done - at)
                read = read_at.get(i)
                if read is not None and i in committed_at:
                    to_read.append((read - committed_at[i]) * 1000)
                    read_to_view.append((done - read) * 1000)
    if not latencies:
        raise ValueError(f"{system} at {rate}/s: no save completed in the measuring window")
    missing = written_ids - applied_at.keys()
    kept_up = not missing
    times = sorted(applied.applied_at)
    in_window = bisect_right(times, window[1]) - bisect_left(times, window[0])
    duration = window[1] - window[0]
    ms = [latency * 1000 for latency in latencies]
    result = LiveResult(
        system=system,
        target_per_s=rate,
        offered_per_s=events / duration,
        events_per_s=in_window / duration,
        p50_ms=percentile(ms, 50),
        p95_ms=percentile(ms, 95),
        p99_ms=percentile(ms, 99),
        max_ms=max(ms),
        kept_up=kept_up,
        drain_s=max(0.0, max(applied_at.values()) - stopped_at) if kept_up else None,
        unprocessed=unprocessed,
        latency_lower_bound=unprocessed > 0,
        events=events,
        duration_s=duration_s,
        latency_clock="recorded_at" if system == EVENTKIT else "writer",
        writers=writers,
        batch=batch,
        to_read_p99_ms=percentile(to_read, 99) if to_read else None,
        events_per_batch=_per_batch(applied, window) if system == EVENTKIT else None,
        read_to_view_p99_ms=percentile(read_to_view, 99) if read_to_view else None,
    )
    note = None
    if system == EVENTKIT and writer_clock:
        # The same latencies measured from the writer's clock instead, as eventsourcing's are.
        cross = [latency * 1000 for latency in writer_clock]
        note = (
            f"eventkit at {rate:,}/s, measured from the writer's save() return instead: "
            f"p50 {format_ms(percentile(cross, 50))} ms, p99 {format_ms(percentile(cross, 99))} ms"
        )
    return result, note


def _per_batch(applied: Applied, window: tuple[float, float]) -> float | None:
    in_window = [t for t in applied.applied_at if window[0] <= t <= window[1]]
    batches = len(set(in_window))
    return len(in_window) / batches if batches else None


def table(results: list[LiveResult]) -> str:
    """The results as a text table."""
    headers = [
        "suite",
        "system",
        "target/s",
        "offered/s",
        "projected/s",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "max ms",
        "kept up",
        "drain s",
        "unprocessed",
        "proj CPU %",
        "writers CPU %",
        "server CPU %",
        "machine CPU %",
        "to read p99",
        "read-view p99",
        "events/batch",
        "GC max ms",
        "GC total ms",
    ]
    rows = [
        [
            r.suite,
            r.system,
            format_rate(r.target_per_s),
            format_rate(r.offered_per_s),
            format_rate(r.events_per_s),
            format_latency(r, r.p50_ms),
            format_latency(r, r.p95_ms),
            format_latency(r, r.p99_ms),
            format_latency(r, r.max_ms),
            yes_no(r.kept_up),
            "-" if r.drain_s is None else f"{r.drain_s:.2f}",
            f"{r.unprocessed:,}",
            *(
                "-" if v is None else f"{v:.0f}"
                for v in (
                    r.projection_cpu_pct,
                    r.writers_cpu_pct,
                    r.server_cpu_pct,
                    r.machine_cpu_pct,
                )
            ),
            "-" if r.to_read_p99_ms is None else format_ms(r.to_read_p99_ms),
            "-" if r.read_to_view_p99_ms is None else format_ms(r.read_to_view_p99_ms),
            "-" if r.events_per_batch is None else f"{r.events_per_batch:.0f}",
            "-" if r.gc_max_ms is None else format_ms(r.gc_max_ms),
            "-" if r.gc_total_ms is None else format_ms(r.gc_total_ms),
        ]
        for r in results
    ]
    return format_table(headers, rows)


def format_latency(result: LiveResult, value: float) -> str:
    return (">=" if result.latency_lower_bound else "") + format_ms(value)


def yes_no(value: bool) -> str:
    return "yes" if value else "no"
