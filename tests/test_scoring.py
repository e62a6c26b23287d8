"""The scoring engine: one step function, whatever the batching; calibrated, drifting, hysteretic."""

import math
from statistics import NormalDist

import numpy as np
import pytest
from support import QUICK_FIT, checkpoint_without, synthetic_csv

from detector import stages
from detector.config import FitSettings, ModelSettings, ScoringSettings
from detector.fit import fit_tables
from detector.schema import Observation, observations_from_table, read_csv
from detector.scoring import Detector, waves
from detector.testing import decide, decide_step, tiny_model


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    path = synthetic_csv(tmp_path_factory.mktemp("data") / "train.csv", entities=4, rows=400, seed=1)
    model, _ = fit_tables(
        [read_csv(path)], ModelSettings(hidden_size=16), FitSettings(**QUICK_FIT), ScoringSettings(), progress=False
    )
    return model


@pytest.fixture(scope="module")
def stream(tmp_path_factory):
    path = synthetic_csv(
        tmp_path_factory.mktemp("data") / "stream.csv", entities=6, rows=120, seed=2, shift_at=80, shift=3.0
    )
    return list(observations_from_table(read_csv(path)))


def _scores(decisions):
    return np.array([[d.score, d.probability, d.is_anomaly] for d in decisions], dtype=float)


def test_one_at_a_time_equals_whole_file_equals_interleaved_batches(fitted, stream):
    whole = _scores(Detector(fitted).process(stream))
    single = Detector(fitted)
    one_by_one = _scores([single.process([o])[0] for o in stream])
    np.testing.assert_allclose(one_by_one, whole, atol=1e-5)
    chunked = Detector(fitted)
    rng = np.random.default_rng(0)
    cuts = np.sort(rng.choice(np.arange(1, len(stream)), size=40, replace=False))
    parts = [chunked.process(list(part)) for part in np.split(np.array(stream, dtype=object), cuts)]
    np.testing.assert_allclose(_scores([d for part in parts for d in part]), whole, atol=1e-5)


def test_each_entity_alone_equals_interleaved(fitted, stream):
    together = Detector(fitted).process(stream)
    for entity in {o.entity for o in stream}:
        alone = Detector(fitted).process([o for o in stream if o.entity == entity])
        mine = [d for d in together if d.entity == entity]
        np.testing.assert_allclose(_scores(alone), _scores(mine), atol=1e-5)


def test_scores_and_probabilities_are_in_range_and_shift_is_seen(fitted, stream):
    decisions = Detector(fitted).process(stream)
    scores = np.array([d.score for d in decisions])
    probabilities = np.array([d.probability for d in decisions])
    assert (scores >= 0).all() and ((probabilities >= 0) & (probabilities <= 1)).all()
    times = np.array([o.timestamp for o in stream]) - stream[0].timestamp
    assert np.median(scores[times >= 80]) > 3 * np.median(scores[(times >= 20) & (times < 80)])
    opened = {d.entity for d in decisions if d.event == "open"}
    assert opened == {o.entity for o in stream}, "every entity's level shift raises an alert"


def test_probability_is_monotone_in_score(fitted, stream):
    detector = Detector(fitted)
    history = [o for o in stream if o.entity == "pump-0"][:60]
    clones = [f"clone-{i}" for i in range(25)]
    for obs in history:  # 25 entities with the very same history, hence the same state
        detector.process([Observation(c, obs.timestamp, obs.values) for c in clones])
    last = history[-1]
    probes = [Observation(c, last.timestamp + 1, [v + 0.3 * i for v in last.values]) for i, c in enumerate(clones)]
    decisions = detector.process(probes)
    order = np.argsort([d.score for d in decisions])
    probabilities = np.array([d.probability for d in decisions])[order]
    assert (np.diff(probabilities) >= -1e-12).all()
    assert probabilities[-1] > probabilities[0]


def test_waves_keep_per_entity_order():
    entities = ["a", "b", "a", "c", "a", "b"]
    result = waves(entities)
    assert [w.tolist() for w in result] == [[0, 1, 3], [2, 5], [4]]
    assert waves([]) == []


def test_persistent_change_stops_alerting_and_is_one_alert(fitted, tmp_path):
    horizon = 6000
    path = synthetic_csv(tmp_path / "drift.csv", entities=1, rows=horizon, seed=3, shift_at=300, shift=2.0)
    decisions = Detector(fitted).process(list(observations_from_table(read_csv(path))))
    events = [(i, d.event) for i, d in enumerate(decisions) if d.event]
    flags = np.array([d.is_anomaly for d in decisions])
    assert any(event == "open" and 300 <= i < 320 for i, event in events), "the shift is detected promptly"
    closes = [i for i, e in events if e == "close"]
    assert closes, "a persistent change must stop alerting"
    assert not flags[-1000:].any(), "no alert long after the change has become the new normal"
    assert len([e for e in events if e[1] == "open"]) <= 3


def test_warm_up_never_alerts_and_score_one_works():
    detector = Detector(tiny_model(warmup_steps=5))
    decisions = [detector.score_one("new", [50.0 * (-1) ** t, -50.0 * (-1) ** t], timestamp=t) for t in range(5)]
    assert not any(d.is_anomaly for d in decisions)
    assert all(d.score > 5 for d in decisions)


def test_alert_names_top_features(fitted, stream):
    decisions = Detector(fitted).process(stream)
    opened = [d for d in decisions if d.event == "open"]
    assert opened and all(1 <= len(d.top_features) <= 3 for d in opened)
    for d in opened:
        shares = [c.share for c in d.top_features]
        assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 1.0 + 1e-9


def test_an_event_is_reported_by_its_onset(fitted, tmp_path):
    path = synthetic_csv(tmp_path / "shift.csv", entities=1, rows=600, seed=4, shift_at=300, shift=3.0)
    decisions = Detector(fitted).process(list(observations_from_table(read_csv(path))))
    probabilities = np.array([d.probability for d in decisions])
    threshold = fitted.scoring.get("false_alarm_rate", 1e-3)
    warmup = fitted.scoring.get("warmup_steps", 0)
    high = warmup + np.flatnonzero(probabilities[warmup:] >= 1 - threshold)
    assert high.size and 300 <= high[0] < 320, "the shift's onset reaches the opening level"
    # the range absorbs the new level (0.7 of its width beyond it) over about a dozen messages, each
    # judged by its excess; the other ~290 messages of the excursion are discounted
    assert high.size <= 15, "the rest of the excursion is discounted below its onset's peak"


def _daily_csv(path, days: float, step_s: float = 1800.0, entities: int = 2):
    """A square daily cycle (high 08:00-20:00) plus noise, every ``step_s`` seconds."""
    rng = np.random.default_rng(3)
    rows = ["timestamp,entity,load"]
    start = 1_700_000_000.0 - 1_700_000_000.0 % 86400
    for t in np.arange(start, start + days * 86400, step_s):
        for e in range(entities):
            hour = (t % 86400) / 3600
            rows.append(f"{t:.0f},e{e},{(5.0 if 8 <= hour < 20 else 1.0) + 0.1 * rng.standard_normal():.4f}")
    path.write_text("\n".join(rows) + "\n")
    return path


def test_daily_context_is_used_only_when_the_fit_covers_a_day_and_keeps_equivalence(tmp_path):
    short, _ = fit_tables(
        [read_csv(_daily_csv(tmp_path / "short.csv", days=1.0))],
        ModelSettings(hidden_size=8),
        FitSettings(**QUICK_FIT),
        ScoringSettings(),
        progress=False,
    )
    assert short.network.architecture.periods == ()  # 80 % of a day trains: no daily context
    model, _ = fit_tables(
        [read_csv(_daily_csv(tmp_path / "long.csv", days=3.0))],
        ModelSettings(hidden_size=8),
        FitSettings(**QUICK_FIT),
        ScoringSettings(),
        progress=False,
    )
    assert model.network.architecture.periods == (86400.0,)
    stream = list(observations_from_table(read_csv(_daily_csv(tmp_path / "later.csv", days=1.5))))
    whole = _scores(Detector(model).process(stream))
    single = Detector(model)
    np.testing.assert_allclose(_scores([single.process([o])[0] for o in stream]), whole, atol=1e-5)


def _novelty(detector: Detector, slot: int, z: float, alert_open: bool = False) -> float:
    """The z-score reported for a rising message of likelihood z-score ``z`` past the warm-up."""
    return stages.novelty(detector.store.novelty, slot, z, z, True, True, alert_open, detector.params)


def _escapes(detector: Detector, slot: int, z: float, alert_open: bool = False) -> bool:
    """Whether a rising message of likelihood z-score ``z`` escapes the novelty discount (the peak
    learns it either way)."""
    reported = _novelty(detector, slot, z, alert_open)
    return bool(reported > min(z, detector.params.threshold_z) - detector.settings.novelty_discount)


def _slot(detector: Detector, entity: str = "pump") -> int:
    return int(detector.store.slots_for([entity], np.zeros(1, dtype=np.int32), 0.0)[0])


@pytest.mark.parametrize(("margin", "reported"), [(0.0, [0, 1, 2, 3]), (1.0, [0, 3])])
def test_an_event_rising_over_several_messages_is_reported_once(margin, reported):
    detector = Detector(tiny_model(novelty_discount=3.0))
    detector.params = detector.params._replace(novelty_margin=margin)
    slot = _slot(detector)
    detector.store.novelty.peak[slot] = 0.0  # an entity whose recent peak is 0 (a new one starts at a settled entity's)
    rising = [1.5, 2.0, 2.4, 2.7]  # sub-alert z-scores of consecutive messages; 2.7 exceeds 1.5 + 1.0
    escaped = [i for i, z in enumerate(rising) if _escapes(detector, slot, z)]
    assert escaped == reported


def test_the_margin_never_withholds_an_alert():
    detector = Detector(tiny_model(false_alarm_rate=1e-3))  # margin 1; alert level: z >= 3.09
    slot = _slot(detector)
    detector.store.novelty.peak[slot] = 0.0
    rising = [2.6, 3.3]  # 2.6 + 1.0 would hide the alert-level 3.3: the bar stops at the alert level
    escaped = [z for z in rising if _escapes(detector, slot, z)]
    assert escaped == rising


@pytest.mark.parametrize(("alert_open", "reported"), [(False, [3.5, 4.0, 4.2, 4.4, 5.6]), (True, [3.5, 5.6])])
def test_while_its_alert_is_open_an_event_rising_far_beyond_the_alert_level_is_reported_once(alert_open, reported):
    detector = Detector(tiny_model(novelty_discount=3.0, false_alarm_rate=1e-3))  # margin 1
    slot = _slot(detector)
    detector.store.novelty.peak[slot] = 0.0
    rising = [3.5, 4.0, 4.2, 4.4, 5.6]  # each a new high beyond the alert level; only 5.6 beats 3.5 + 1.0
    escaped = [z for z in rising if _escapes(detector, slot, z, alert_open=alert_open)]
    assert escaped == reported


def test_a_message_that_is_not_new_stays_below_the_alert_level_however_large():
    detector = Detector(tiny_model(novelty_discount=3.0))
    slot = _slot(detector)
    detector.store.novelty.peak[slot] = 12.0  # a huge event just now
    for z in (1.0, 8.0, 11.0):  # later messages of it, below its peak
        discounted = _novelty(detector, slot, z)
        assert discounted == pytest.approx(min(z, detector.params.threshold_z) - 3.0)
        assert NormalDist().cdf(discounted) < detector.threshold  # its probability


@pytest.mark.parametrize(
    ("peak", "z", "reported_beyond_level"),
    [  # peak and z relative to the alert level
        (-5.0, 0.5, 0.5),  # a calm entity (peak far below the level): its z itself
        (1.0, 1.05, 0.05),  # barely beats a peak a recent event raised: barely beyond the level
        (1.0, 3.0, 2.0),  # beats it by far
    ],
)
def test_a_new_high_is_reported_beyond_the_alert_level_by_no_more_than_it_beats_the_peak(
    peak, z, reported_beyond_level
):
    detector = Detector(tiny_model(novelty_discount=3.0))
    level = detector.params.threshold_z
    slot = _slot(detector)
    detector.store.novelty.peak[slot] = level + peak
    reported = _novelty(detector, slot, level + z)
    assert reported == pytest.approx(level + reported_beyond_level)
    assert NormalDist().cdf(reported) > detector.threshold  # it still reaches the alert level: decisions are unchanged


def _alert_run(log_scores: list[float], close_after: int = 10, elapsed: float = 1.0) -> tuple[list[int], list[int]]:
    """(positions where the alert is open, positions marked is_anomaly) for one entity fed these
    log scores (a neutral calibration: log score 0 is normal), one message every ``elapsed`` s."""
    detector = Detector(tiny_model(warmup_steps=0, close_after=close_after))
    slot = _slot(detector)
    is_open, marked = [], []
    for i, x in enumerate(log_scores):
        if decide(detector, slot, np.exp(x), timestamp=i * elapsed, elapsed=elapsed)[1]:
            marked.append(i)
        if detector.store.hysteresis.alert_open[slot]:
            is_open.append(i)
    return is_open, marked


def test_a_one_message_blip_is_a_one_message_alert():
    assert _alert_run([0.0] * 50 + [8.0] + [0.0] * 30) == ([50], [50])


def test_the_hysteresis_grows_with_the_evidence_up_to_close_after():
    three, _ = _alert_run([0.0] * 50 + [8.0] * 3 + [0.0] * 30)
    assert three == list(range(50, 55)), "3 anomalous messages: closed by the 3rd calm one"
    dip, _ = _alert_run([0.0] * 50 + [8.0] * 30 + [0.0] * 9 + [8.0] * 5 + [0.0] * 30, close_after=10)
    assert dip == list(range(50, 103)), "a long anomaly survives a 9-message dip; the 10th calm message closes it"


def test_a_burst_is_marked_by_its_onset_and_a_sustained_anomaly_while_it_lasts():
    _, burst = _alert_run([0.0] * 50 + [8.0] * 3 + [0.0] * 30)
    assert burst == [50], "a short alert: its onset only"
    _, sustained = _alert_run([0.0] * 50 + [8.0] * 30 + [0.0] * 9 + [8.0] * 5 + [0.0] * 30, close_after=10)
    expected = [50, *range(59, 80), *range(89, 94)]
    assert sustained == expected, (
        "from its 10th anomalous message on, every anomalous one; not the calm ones of the dip"
    )
    _, weak = _alert_run([0.0] * 50 + [8.0] + [2.5] * 40 + [0.0] * 30, close_after=10)
    assert weak == [50], "messages below the fit-time alert level are not marked, however long the alert"


def test_a_lasting_change_the_baseline_absorbed_is_no_longer_marked():
    # one message every 5 minutes: the baseline's 3,600 s half-life absorbs the change in about an hour
    is_open, marked = _alert_run([0.0] * 50 + [8.0] * 300, close_after=10, elapsed=300.0)
    closed_at = is_open[-1] + 1
    assert 60 < closed_at < 200, "the change became the entity's normal and its alert closed"
    calm = set(range(closed_at - 9, closed_at))  # the 9 calm messages the alert waited through
    assert not calm & set(marked), "still beyond the fit-time level, but calm against the baseline"
    assert marked == [50, *range(59, closed_at - 9)], "marked from the 10th anomalous message until calm"


def _normal_messages(detector: Detector, steps: int, seed: int, entities: int = 500):
    """(probability, events) of each step of ``entities`` new entities fed log scores drawn from
    the calibration (normal data), past their warm-up."""
    slots = detector.store.slots_for([f"e{i}" for i in range(entities)], np.zeros(entities, dtype=np.int32), 0.0)
    draws, calibration = np.random.default_rng(seed), detector.model.calibration
    for _ in range(steps):
        scores = np.exp(calibration.log_mean + calibration.log_std * draws.standard_normal(entities))
        probability, events = decide_step(detector, slots, scores)  # decide for a whole step in one call
        yield probability, [event for event in events if event]


def test_alerts_open_at_the_false_alarm_rate_on_normal_data():
    model = tiny_model(warmup_steps=0, seasonal_bins=0)
    detector, rate = Detector(model), ScoringSettings(**model.scoring).false_alarm_rate
    assert 0.9 < detector.threshold < 1 - rate, "the novelty discount keeps normal messages below their raw likelihood"
    # per message of the entities' lives: how many of the 500 reached the threshold (other draws than the simulation's)
    reached = [
        int((probability >= detector.threshold).sum()) for probability, _ in _normal_messages(detector, 3000, seed=1)
    ]
    settled = sum(reached[1000:]) / (2000 * 500)
    assert 0.7 * rate < settled < 1.4 * rate, settled
    assert sum(reached[:200]) / (200 * 500) < 2 * rate, "a new entity's first messages are judged as a settled one's"
    stricter = Detector(tiny_model(warmup_steps=0, seasonal_bins=0, false_alarm_rate=rate / 10))
    assert stricter.threshold > detector.threshold


def test_without_the_simulated_start_peak_a_new_entity_alerts_more_often():
    model = tiny_model(warmup_steps=0, seasonal_bins=0)
    calibrated = Detector(model)
    naive = Detector(model, simulate_null=False)
    naive.threshold = calibrated.threshold  # the same level; only the start of the novelty peak differs
    counts = [
        sum(event == "open" for _, events in _normal_messages(detector, 50, seed=2) for event in events)
        for detector in (calibrated, naive)
    ]
    assert calibrated.store._fresh("peak") > 1.0 and counts[0] * 3 < counts[1], counts


def test_a_checkpoint_from_before_evidence_was_counted_keeps_the_full_hysteresis():
    detector = Detector(tiny_model(warmup_steps=0, close_after=10))
    slot = _slot(detector)
    for x in [0.0] * 50 + [8.0]:  # a blip: with its evidence counted the next calm message closes it
        decide(detector, slot, np.exp(x))
    old = checkpoint_without(detector.store.export(0), "evidence")  # what the previous version wrote
    restored = Detector(tiny_model(warmup_steps=0, close_after=10))
    assert restored.store.restore(old, owner=0, now=0.0) == 1
    slot = _slot(restored)
    still_open = []
    for _ in range(12):
        decide(restored, slot, 1.0)
        still_open.append(bool(restored.store.hysteresis.alert_open[slot]))
    assert still_open == [True] * 9 + [False] * 3, "closed by the 10th calm message, as before"


def _nightly_job(seasonal_bins: int, days: int = 10, extra_hour: int | None = None):
    """(detector, slot, day, timestamp, log score) of each message, for the caller to decide, of a
    host reporting every 5 minutes whose log score jumps from 0 to 4 every day from 03:00 to 04:00
    (a nightly job) and, on the last day only, at ``extra_hour`` too."""
    detector = Detector(tiny_model(warmup_steps=0, seasonal_bins=seasonal_bins))
    detector.params = detector.params._replace(peak_decay=2.0 ** (-1.0 / 50.0))  # a short novelty memory
    slot = _slot(detector, "job-host")
    rng = np.random.default_rng(0)
    for t in np.arange(0.0, days * 86400.0, 300.0):
        day, hour = int(t // 86400), int(t % 86400 // 3600)
        burst = hour == 3 or (day == days - 1 and hour == extra_hour)
        yield detector, slot, day, float(t), (4.0 if burst else 0.0) + 0.3 * rng.standard_normal()


def _daily_opens(seasonal_bins: int, days: int = 10, extra_hour: int | None = None) -> list[int]:
    """Alerts opened per day for the nightly-job host (see :func:`_nightly_job`)."""
    opens = [0] * days
    for detector, slot, day, t, log_score in _nightly_job(seasonal_bins, days, extra_hour):
        opens[day] += decide(detector, slot, np.exp(log_score), t, elapsed=300.0)[2] == "open"
    return opens


def test_an_error_recurring_every_day_at_the_same_hour_stops_alerting():
    assert _daily_opens(seasonal_bins=0) == [1] * 10, "without the time-of-day memory: an alert every night"
    remembered = _daily_opens(seasonal_bins=24, extra_hour=15)
    assert remembered[0] == 1 and not any(remembered[3:9]), "the nightly job becomes the entity's usual at that hour"
    assert remembered[9] == 1, "the same error at another hour still alerts"


def test_the_calm_after_an_event_is_not_reported_as_news():
    """At 04:00 the nightly job ends: the short-term average still lags and the new hour's memory
    does not expect it, so its likelihood can beat the recent peak -- but the message lowers the
    average, so its probability is discounted like any echo of the event."""
    high = {"rising": 0, "falling": 0}
    for detector, slot, _, t, log_score in _nightly_job(seasonal_bins=24):
        rises = log_score > detector.store.likelihood.fast_mean[slot]
        probability = decide(detector, slot, np.exp(log_score), t, elapsed=300.0)[0]
        if probability >= detector.threshold:
            high["rising" if rises else "falling"] += 1
    assert high["rising"] >= 1 and high["falling"] == 0, high


def _ranged_pair() -> tuple[Detector, Detector]:
    """Two detectors of a model fitted on values in [0, 1]: with the range check, and without it."""

    def make(tolerance: float) -> Detector:
        return Detector(tiny_model(feature_range=([0.0, 0.0], [1.0, 1.0]), warmup_steps=0, range_tolerance=tolerance))

    return make(0.05), make(math.inf)


def test_a_level_never_seen_before_alerts_without_teaching_the_entity_it_is_usual():
    checked, unchecked = _ranged_pair()
    rng = np.random.default_rng(0)
    for t, values in enumerate(rng.uniform(0.0, 1.0, (200, 2)).tolist()):
        assert checked.score_one("pump", values, float(t)) == unchecked.score_one("pump", values, float(t)), (
            "inside the range: no difference"
        )
    breach = checked.score_one("pump", [0.5, 1.5], 200.0)  # feature b half its range's width beyond it
    plain = unchecked.score_one("pump", [0.5, 1.5], 200.0)
    assert breach.event == "open" and breach.top_features[0][0] == "b", "alerts, naming the feature out of range"
    assert plain.event is None and breach.score > plain.score and breach.probability > plain.probability
    for stage in ("likelihood", "baseline", "novelty", "seasonal", "error", "range"):
        for name, array in getattr(checked.store, stage)._asdict().items():
            assert np.array_equal(array, getattr(getattr(unchecked.store, stage), name)), (
                f"{stage}.{name}: the statistics learn the reconstruction score only"
            )
    stands_out = []
    for t in range(201, 206):  # the range absorbs half of each excess: 0.25 / 1.25 = 0.2 widths, then 0.09, 0.04
        again, again_plain = (d.score_one("pump", [0.5, 1.5], float(t)) for d in (checked, unchecked))
        stands_out.append(again.score > again_plain.score)
    assert stands_out == [True, True, False, False, False], (
        "a new level stands out for 3 messages, then belongs to the range"
    )
    assert (again.score, again.probability) == (again_plain.score, again_plain.probability)


def test_one_wild_value_widens_the_range_by_a_share_of_its_excess():
    absorbing, including = (
        Detector(tiny_model(feature_range=([0.0, 0.0], [1.0, 1.0]), warmup_steps=0)) for _ in range(2)
    )
    including.params = including.params._replace(range_absorb=1.0)  # Numenta's: the range includes the value
    for detector in (absorbing, including):
        detector.score_one("pump", [0.5, 11.0], 0.0)  # a glitch: feature b ten widths above its range
    high = {
        share: float(d.store.range.high[0, 1]) * d.model.feature_scale[1] + d.model.feature_mean[1]
        for share, d in ((0.5, absorbing), (1.0, including))
    }
    assert high[0.5] == pytest.approx(6.0, rel=1e-5) and high[1.0] == pytest.approx(11.0, rel=1e-5)
    level = [
        d.score_one("pump", [0.5, 7.0], 1.0).score > d.model.calibration.threshold_score for d in (absorbing, including)
    ]
    assert level == [True, False], "after the glitch a level of 7 is still news with half-absorption, hidden with full"


def test_the_range_check_combines_features_as_the_score_does():
    checked, _ = _ranged_pair()
    store, params = checked.store, checked.params

    def judged(values: list[float]) -> float:
        slot, beyond = _slot(checked, str(values)), np.zeros(2, dtype=np.float32)
        width = stages.range_excess(store.range, slot, np.array(values, np.float32), *store.start_range, params, beyond)
        return stages.range_judged(1.0, width, params)

    assert judged([0.5, 1.06]) == 1.0, "one feature 0.06 widths out, root mean square 0.042: within the 5 % tolerance"
    assert judged([1.06, 1.06]) > checked.model.calibration.threshold_score, "both: 0.06"


def test_after_an_upgrade_an_entity_is_not_alerted_for_where_it_wandered_before_ranges_were_kept():
    checked, _ = _ranged_pair()
    for t in range(50):
        checked.score_one("pump", [0.5, 0.5], float(t))
    old = checkpoint_without(checked.store.export(0), "range_low", "range_high")  # what the previous version wrote
    upgraded, unchecked = _ranged_pair()
    for detector in (upgraded, unchecked):
        detector.store.restore(old, owner=0, now=0.0)
    wandered = [d.score_one("pump", [0.5, 1.5], 50.0) for d in (upgraded, unchecked)]
    assert wandered[0] == wandered[1], "its first message completes the fit data's range instead of being judged by it"
    assert upgraded.score_one("pump", [0.5, 2.5], 51.0).score > unchecked.score_one("pump", [0.5, 2.5], 51.0).score, (
        "then the range is known"
    )


def test_a_model_fitted_before_ranges_were_kept_gets_no_range_check():
    without_range, switched_off = Detector(tiny_model()), Detector(tiny_model(range_tolerance=math.inf))
    for t, values in enumerate([[0.5, 0.5]] * 20 + [[1e6, -1e6]]):
        assert without_range.score_one("pump", values, float(t)) == switched_off.score_one("pump", values, float(t))
