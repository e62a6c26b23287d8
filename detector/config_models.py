"""The settings models: one pydantic model per section, and :class:`Settings` that holds them all.

Each field carries its default and a description; ``config.example.toml`` and the settings
table in the docs are generated from them (:mod:`detector.config_docs`). Loading a file and
the environment is :mod:`detector.config`.
"""

from __future__ import annotations

from pathlib import Path
from statistics import NormalDist
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, SecretStr, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

__all__ = [
    "ADVANCED",
    "FitSettings",
    "KafkaSettings",
    "LogSettings",
    "MetricsSettings",
    "ModelSettings",
    "ScoringSettings",
    "Settings",
    "StreamSettings",
]


# marks a setting that tunes one rule's internals (the docs list it apart from the few users set)
ADVANCED: dict[str, Any] = {"group": "advanced"}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSettings(_Section):
    """Where the fitted model lives and its architecture (used by ``fit``)."""

    path: Path = Field(Path("models/current"), description="Model directory written by `detector fit`.")
    cell: Literal["lstm", "gru"] = Field("lstm", description="Recurrent cell; GRU is the lighter alternative.")
    hidden_size: int = Field(32, ge=2, le=1024, description="Units per recurrent layer.")
    num_layers: int = Field(1, ge=1, le=2, description="Stacked recurrent layers (1-2).")
    bottleneck: int = Field(8, ge=1, le=256, description="Width of the decoder's bottleneck layer.")
    periods: list[PositiveFloat] = Field(
        [86400.0, 604800.0],
        description="Calendar periods (seconds: a day, a week) whose phase at each message's timestamp is a model "
        "input, so regular daily/weekly patterns are expected; `fit` uses a period only when the training rows of "
        "every entity span at least one whole period.",
    )
    level_halflife_s: float = Field(
        86400.0,
        ge=0,
        description="Half-life (seconds of the entity's own timestamps) of each entity's tracked level: the model "
        "reconstructs values relative to it, so after a lasting level shift the entity is judged around its new "
        "level within a few of these instead of erring for ever (0: off, levels relative to the fit data only).",
    )


class FitSettings(_Section):
    """Training: truncated BPTT, gradient clipping, early stopping, calibration."""

    window: int = Field(50, ge=2, description="Truncated-BPTT window length (steps).")
    streams: int = Field(8, ge=1, description="Parallel sub-sequences per batch for a long series.")
    max_epochs: int = Field(60, ge=1, description="Upper bound on training epochs.")
    patience: int = Field(8, ge=1, description="Epochs without validation improvement before stopping.")
    learning_rate: float = Field(5e-3, gt=0, description="Adam learning rate.")
    clip_norm: float = Field(1.0, gt=0, description="Gradient-norm clipping bound.")
    holdout_fraction: float = Field(
        0.2, gt=0, lt=0.9, description="Tail of each series held out for early stopping and calibration."
    )
    seed: int = Field(7, description="Random seed; a fit is reproducible.")
    report: bool = Field(True, description="Write report.png (loss curves, score histogram).")


class ScoringSettings(_Section):
    """How a score becomes a probability and an alert; a half-life counts messages unless named ``*_s`` (seconds)."""

    false_alarm_rate: float = Field(
        1e-3,
        gt=0,
        lt=0.5,
        description="Per-message rate at which alerts open on normal data: an alert opens at the probability that "
        "this fraction of messages reaches when an entity's log scores follow the fit-time calibration (simulated at "
        "start: about 0.92 at 1e-3, 0.98 at 1e-4, 0.99 at 1e-5; above about 2e-3 the level drops below 0.1, into "
        "messages the novelty discount holds down, so keep it at or below 1e-3). On a steady stream 1e-3 is about "
        "1.4 false alerts a day per entity reporting once a minute: lower it for large fleets. Also sets the "
        "fit-time alert level (score quantile 1 - rate of the held-out data) that a sustained alert's messages must "
        "exceed to be marked is_anomaly. Rates below about 1e-5 resolve to the largest of 2 million simulated "
        "probabilities.",
    )
    close_probability: float = Field(
        0.9, gt=0, lt=1, description="An open alert closes once probability stays below this ..."
    )
    close_after: int = Field(
        10,
        ge=1,
        description="... for as many consecutive messages as the alert has had above it (the opening one included), "
        "at most this many: a one-message blip is a one-message alert, while an alert with this much evidence needs "
        "this many calm messages to close, so a long anomaly does not flap.",
    )
    smoothing_halflife: float = Field(
        4.0,
        gt=0,
        description="Half-life (messages) of the per-feature error smoothing that makes small persistent shifts "
        "visible.",
        json_schema_extra=ADVANCED,
    )
    drift_halflife: float = Field(
        1000.0,
        gt=1,
        description="Half-life (messages) of each entity's score baseline; a persistent change stops alerting within "
        "about one to three half-lives (longer for larger changes: deviations are clipped at 3 standard deviations) "
        "-- or of drift_halflife_s, "
        "whichever is shorter.",
    )
    drift_halflife_s: float = Field(
        3600.0,
        gt=0,
        description="Half-life (seconds of the entity's own timestamps) of its score baseline: however slowly an "
        "entity reports, a persistent change stops alerting within a few of these (inf: messages only).",
    )
    novelty_discount: float = Field(
        3.0,
        ge=0,
        description="Standard deviations taken off the likelihood z-score of a message that does not exceed the "
        "recent peak, so that one event is reported by its onset rather than by every message while it lasts; such a "
        "message is also held this far below the alert level, however large, while one that exceeds the peak is "
        "reported beyond the alert level by at most as much as it exceeds it (0 turns both off).",
        json_schema_extra=ADVANCED,
    )
    seasonal_bins: int = Field(
        24,
        ge=0,
        le=1440,
        description="Time-of-day bins (of each entity's own UTC timestamps) in which the entity's usual log score is "
        "remembered; a message is judged against its bin's too, so an error that recurs every day at the same hour "
        "(a nightly job) stops alerting after a few days (0: off; at most 1440, one a minute: each bin is 4 bytes of "
        "state per entity).",
    )
    seasonal_halflife_s: float = Field(
        172800.0,
        gt=0,
        description="Half-life (seconds of the entity's own timestamps) of each time-of-day bin's memory: 172800 "
        "(two days) forgets half of what a bin held over two days of the entity's time.",
        json_schema_extra=ADVANCED,
    )
    range_tolerance: float = Field(
        0.05,
        ge=0,
        description="A message with a feature beyond the range its entity has shown (starting from the fit data's "
        "range) by more than this fraction of the range's width is anomalous however well the model reconstructs it: "
        "a level never seen before (Numenta's spatial anomaly, same default). Each message then widens its entity's "
        "range by half of its excess (inf: off).",
    )
    warmup_steps: int = Field(
        10, ge=0, description="Messages of a new entity scored but never alerted on while its state warms up."
    )
    top_features: int = Field(
        3, ge=1, description="Features named in an alert as the largest contributors to the error."
    )

    @property
    def open_probability(self) -> float:
        """1 - ``false_alarm_rate``: the fit-time probability (of the calibration) at the alert level.
        Alerts open on the likelihood at :attr:`detector.scoring.Detector.threshold`, its simulated counterpart."""
        return 1.0 - self.false_alarm_rate

    @property
    def open_z(self) -> float:
        """Standard-normal z-score of :attr:`open_probability` (3.09 at the default rate).

        >>> round(ScoringSettings().open_z, 2)
        3.09
        """
        return NormalDist().inv_cdf(self.open_probability)


class KafkaSettings(_Section):
    """Broker connection, topics and consumer-group tuning."""

    bootstrap_servers: str = Field("127.0.0.1:9092", description="Comma-separated host:port list.")
    input_topics: list[str] = Field(["sensors"], min_length=1, description="Topics to consume.")
    alert_topic: str = Field("detector-alerts", description="Where alerts are published (JSON, keyed by entity).")
    dead_letter_topic: str = Field("detector-dead-letters", description="Where unscorable messages go, with a reason.")
    scores_topic: str | None = Field(
        None, description="If set, every decision (score, probability, is_anomaly, source) is published here too."
    )
    checkpoint_topic: str = Field(
        "detector-checkpoints", description="Compacted topic holding per-partition state checkpoints."
    )
    group_id: str = Field("detector", description="Consumer group.")
    client_id: str = Field("detector", description="Client id sent to the broker.")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="Broker security protocol."
    )
    ssl_cafile: Path | None = Field(None, description="CA bundle for SSL.")
    ssl_certfile: Path | None = Field(None, description="Client certificate for SSL.")
    ssl_keyfile: Path | None = Field(None, description="Client key for SSL.")
    ssl_password: SecretStr | None = Field(None, description="Password of the client key.")
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="SASL mechanism."
    )
    sasl_username: str | None = Field(None, description="SASL user.")
    sasl_password: SecretStr | None = Field(None, description="SASL password (secret).")
    session_timeout_ms: int = Field(10000, ge=1000, description="Consumer-group session timeout.")
    heartbeat_interval_ms: int = Field(2000, ge=100, description="Consumer heartbeat interval.")
    max_poll_interval_ms: int = Field(
        60000,
        ge=1000,
        description="Longest allowed gap between polls; also how long a rebalance waits for a member that died "
        "mid-join.",
    )
    max_poll_records: int = Field(2000, ge=1, description="Upper bound on messages per poll (bounds work per poll).")
    fetch_max_wait_ms: int = Field(
        10,
        ge=0,
        le=10000,
        description="Longest the broker may hold a fetch waiting for data. Apache Kafka answers as soon as data "
        "arrives (use e.g. 500: no added latency, little idle load); the bundled Tansu broker answered only after "
        "about the whole wait when measured, hence 10.",
    )
    fetch_min_bytes: int = Field(
        1,
        ge=1,
        description="Data the broker gathers before answering a fetch, within fetch_max_wait_ms (higher: fewer, "
        "larger fetches under load).",
    )
    request_timeout_ms: int = Field(30000, ge=1000, description="Broker request timeout.")
    create_topics: bool = Field(
        False,
        description="Create the alert, dead-letter, checkpoint (compacted) and scores topics at start-up if they are "
        "missing (one partition each); otherwise a missing one stops the start with exit 2.",
    )

    @model_validator(mode="after")
    def _sasl_needs_credentials(self) -> KafkaSettings:
        if self.security_protocol.startswith("SASL") and not (
            self.sasl_mechanism and self.sasl_username and self.sasl_password
        ):
            raise ValueError("SASL security_protocol needs sasl_mechanism, sasl_username and sasl_password")
        return self


class StreamSettings(_Section):
    """Message format, micro-batching, state and checkpoints of ``detector run``."""

    entity_field: str = Field("entity", description="JSON field naming the entity (falls back to the message key).")
    timestamp_field: str = Field("timestamp", description="JSON field with ISO 8601 or epoch s/ms time.")
    values_field: str = Field("values", description="JSON object field holding the features.")
    batch_max_messages: int = Field(1000, ge=1, description="Micro-batch size cap.")
    batch_max_ms: int = Field(
        10,
        ge=1,
        description="Longest wait (milliseconds) for the first messages of a micro-batch; what is already fetched is "
        "then taken without waiting.",
    )
    max_message_bytes: int = Field(65536, ge=64, description="Larger messages are dead-lettered.")
    max_entity_chars: int = Field(
        256,
        ge=1,
        le=65536,
        description="Longest entity name (characters, after trimming spaces); a message naming a longer one is "
        "dead-lettered (reason schema), never cut.",
    )
    max_future_skew_s: float = Field(
        86400.0,
        ge=0,
        description="A message whose timestamp lies more than this many seconds ahead of the wall clock is "
        "dead-lettered (reason future_timestamp), so one bad clock cannot make its entity's later messages stale. "
        "Old timestamps are scored.",
    )
    dead_letter_max_bytes: int = Field(
        1_000_000,
        ge=4096,
        le=2_000_000,
        description="Largest dead-letter record (key, value and headers); a larger original value is cut to fit and "
        "marked by the header detector.errors.value.truncated.from. Keep it below the dead-letter topic's "
        "max.message.bytes.",
    )
    reject_out_of_order: bool = Field(True, description="Dead-letter a message older than its entity's last one.")
    max_entities: int = Field(
        1_000_000, ge=1, description="Tracked entities; least recently seen are evicted beyond it."
    )
    entity_ttl_s: float = Field(86400.0, gt=0, description="Idle entities are evicted after this many seconds.")
    checkpoint_interval_s: float = Field(60.0, gt=0, description="Seconds between state checkpoints.")
    shutdown_grace_s: float = Field(30.0, gt=0, description="Time allowed to finish, commit and checkpoint on SIGTERM.")
    reload_watch_s: float = Field(
        0.0,
        ge=0,
        description="Seconds between looks at the settings file and the model directory: a change reloads "
        "them as SIGHUP does (0: off, only SIGHUP reloads).",
    )


class MetricsSettings(_Section):
    """The HTTP endpoint for /metrics, /healthz and /readyz."""

    host: str = Field("0.0.0.0", description="Bind address.")
    port: int = Field(9100, ge=0, le=65535, description="Port (0 picks a free one).")
    stall_after_s: float = Field(60.0, gt=0, description="/healthz fails when the loop made no progress for this long.")


class LogSettings(_Section):
    """Structured logging."""

    level: Literal["debug", "info", "warning", "error"] = Field("info", description="Minimum level.")
    format: Literal["auto", "json", "console"] = Field(
        "auto", description="auto: console on a TTY, JSON lines otherwise."
    )


class Settings(BaseSettings):
    """All settings of the service and the offline commands."""

    model_config = SettingsConfigDict(env_prefix="DETECTOR_", env_nested_delimiter="__", extra="forbid")

    model: ModelSettings = ModelSettings()
    fit: FitSettings = FitSettings()
    scoring: ScoringSettings = ScoringSettings()
    kafka: KafkaSettings = KafkaSettings()
    stream: StreamSettings = StreamSettings()
    metrics: MetricsSettings = MetricsSettings()
    log: LogSettings = LogSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment wins over the TOML file, which is passed as init arguments. A variable that names
        # no setting is ignored (the command line warns about it, see detector.environment).
        from detector.environment import known_only

        def known_environment() -> dict[str, Any]:
            return known_only(env_settings())

        # a plain callable returning a dict is a source to pydantic-settings, though not typed as one
        return known_environment, init_settings  # type: ignore[return-value]
