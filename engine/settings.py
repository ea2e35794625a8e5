"""Service settings: each from a CLI option or an ANTIFRAUD_* environment variable."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from antifraud.engine.verdicts import VERDICTS, Verdict

FailPolicy = Verdict  # what stands in for the score bands when a signal is missing (engine/pipeline.py)
ROOT = Path(__file__).resolve().parent.parent
# The embedded Redis's files (`serve` without --redis) go under <data dir>/redis; relative to the
# working directory, never the package folder, so two checkouts or services never share a server.
DEFAULT_DATA_DIR = "var"
#: the file under the data directory holding the pid of the decision sink `serve` runs
SINK_PID_FILE = "sink.pid"
#: the file under the data directory holding the pid of the webhook delivery worker `serve` runs
HOOKS_PID_FILE = "hooks.pid"


def _env(name: str, default: str) -> str:
    return os.environ.get(f"ANTIFRAUD_{name}", default)


def _flag(name: str, default: str) -> bool:
    """An on/off setting: on, true, 1 or yes; off, false, 0 or no (any case)."""
    value = _env(name, default).strip().lower()
    if value in ("on", "true", "1", "yes"):
        return True
    if value in ("off", "false", "0", "no"):
        return False
    raise ValueError(f"ANTIFRAUD_{name} must be on or off, not {value!r}")


@dataclass
class Settings:
    """Everything the scoring service needs to start."""

    redis_url: str | None = field(default_factory=lambda: _env("REDIS_URL", "") or None)
    model_dir: Path = field(default_factory=lambda: Path(_env("MODEL_DIR", str(ROOT / "models" / "default"))))
    shadow_model_dir: Path | None = field(
        default_factory=lambda: Path(p) if (p := _env("SHADOW_MODEL_DIR", "")) else None
    )
    shadow_share: float = field(default_factory=lambda: float(_env("SHADOW_SHARE", "0.1")))
    rules_dir: Path = field(default_factory=lambda: Path(_env("RULES_DIR", str(ROOT / "rules"))))
    api_keys_file: Path | None = field(
        default_factory=lambda: Path(p) if (p := _env("API_KEYS", "")) else None
    )
    budget_ms: float = field(default_factory=lambda: float(_env("BUDGET_MS", "50")))
    fail_policy: FailPolicy = field(default_factory=lambda: _env("FAIL_POLICY", "review"))  # type: ignore[arg-type,return-value]
    # The buffer streams' bound (docs/decisions.md): what a sink outage may fill before decisions are
    # answered unlogged (degraded) and feedback refused. About 3 KB a decision: 1,000,000 is ~3 GB.
    buffer_max_entries: int = field(default_factory=lambda: int(_env("BUFFER_MAX_ENTRIES", "1000000")))
    buffer_max_age_s: float = field(default_factory=lambda: float(_env("BUFFER_MAX_AGE_S", "86400")))
    # replicas that must confirm a decision or feedback event before it is acknowledged (Redis WAIT;
    # 0: none), and how long to wait for them: docs/scale.md
    redis_wait_replicas: int = field(default_factory=lambda: int(_env("REDIS_WAIT_REPLICAS", "0")))
    redis_wait_ms: int = field(default_factory=lambda: int(_env("REDIS_WAIT_MS", "20")))
    max_body_bytes: int = field(default_factory=lambda: int(_env("MAX_BODY_BYTES", "16384")))
    namespace: str = field(default_factory=lambda: _env("NAMESPACE", "af"))
    data_dir: Path = field(default_factory=lambda: Path(_env("DATA_DIR", DEFAULT_DATA_DIR)).absolute())
    # How far ahead of the service's clock a payment may be stamped (client clocks drift): beyond,
    # the payment is refused (422), since its time would become its card's and merchant's "now".
    clock_skew_s: float = field(default_factory=lambda: float(_env("CLOCK_SKEW_S", "300")))
    # The durable decision store (docs/decisions.md): a postgresql:// URL when several hosts share it,
    # else Parquet files under a folder (default: <data dir>/decisions).
    store_url: str = field(default_factory=lambda: _env("STORE", ""))
    # How long the store keeps decisions and feedback: disputes and chargebacks come back for up to
    # 540 days after a payment (the longest card-scheme limits), so two years by default.
    retention_days: int = field(default_factory=lambda: int(_env("RETENTION_DAYS", "730")))
    # The risk console (docs/console.md): mounted in this worker unless CONSOLE=off; its public base URL
    # (printed by `serve`; https:// makes every session cookie Secure); a session ends after
    # `console_session_idle_s` without a request or `console_session_max_s` after sign-in.
    console: bool = field(default_factory=lambda: _flag("CONSOLE", "on"))
    console_url: str | None = field(default_factory=lambda: _env("CONSOLE_URL", "") or None)
    console_session_idle_s: int = field(default_factory=lambda: int(_env("CONSOLE_SESSION_IDLE_S", "1800")))
    console_session_max_s: int = field(default_factory=lambda: int(_env("CONSOLE_SESSION_MAX_S", "43200")))
    # sign-in attempts an IP may make per minute (a guess at keys is audited and slowed down)
    console_signin_per_minute: int = field(
        default_factory=lambda: int(_env("CONSOLE_SIGNIN_PER_MINUTE", "10"))
    )
    # the body limit of the rule tester's upload (POST /console/rules/test) only; every other route
    # keeps `max_body_bytes`
    console_upload_bytes: int = field(default_factory=lambda: int(_env("CONSOLE_UPLOAD_BYTES", "1048576")))
    # the review queue: the most open cases (then new ones are refused, never evicted), how long a
    # claim lasts, how long resolved cases stay in Redis
    review_queue_max: int = field(default_factory=lambda: int(_env("REVIEW_QUEUE_MAX", "10000")))
    review_claim_s: int = field(default_factory=lambda: int(_env("REVIEW_CLAIM_S", "900")))
    review_keep_days: int = field(default_factory=lambda: int(_env("REVIEW_KEEP_DAYS", "30")))
    # the rule tester: a history file to backtest over, and the most logged decisions a test reads
    console_history: Path | None = field(
        default_factory=lambda: Path(p) if (p := _env("CONSOLE_HISTORY", "")) else None
    )
    console_test_max_decisions: int = field(
        default_factory=lambda: int(_env("CONSOLE_TEST_MAX_DECISIONS", "200000"))
    )
    # webhooks: the endpoints file (none: nothing is published), attempts per event, one POST's timeout
    webhooks_file: Path | None = field(
        default_factory=lambda: Path(p) if (p := _env("WEBHOOKS", "")) else None
    )
    webhook_max_attempts: int = field(default_factory=lambda: int(_env("WEBHOOK_MAX_ATTEMPTS", "12")))
    webhook_timeout_s: float = field(default_factory=lambda: float(_env("WEBHOOK_TIMEOUT_S", "5")))
    # `serve` runs the webhook delivery worker: on by default when an endpoints file is given
    hooks: bool = field(default_factory=lambda: _flag("HOOKS", "on" if _env("WEBHOOKS", "") else "off"))
    # model monitoring in the decision sink (docs/monitoring.md, "In the service"): how often it runs
    # (0: off), how far back it reads decisions and at most how many (the newest), the thresholds'
    # YAML (none: the defaults of engine.monitoring.Thresholds)
    monitor_interval_s: float = field(default_factory=lambda: float(_env("MONITOR_INTERVAL_S", "300")))
    monitor_window_s: float = field(default_factory=lambda: float(_env("MONITOR_WINDOW_S", "3600")))
    monitor_max_rows: int = field(default_factory=lambda: int(_env("MONITOR_MAX_ROWS", "50000")))
    monitor_thresholds: Path | None = field(
        default_factory=lambda: Path(p) if (p := _env("MONITOR_THRESHOLDS", "")) else None
    )

    def __post_init__(self) -> None:
        if self.fail_policy not in VERDICTS:
            raise ValueError(f"fail policy must be one of {', '.join(VERDICTS)}, not {self.fail_policy!r}")
        if not self.store_url:
            self.store_url = str(self.data_dir / "decisions")
        if self.retention_days < 1:
            raise ValueError(f"retention_days must be at least 1, got {self.retention_days}")
        if not self.clock_skew_s >= 0:
            raise ValueError(f"clock_skew_s must be 0 or more seconds, got {self.clock_skew_s}")
        if not 0 < self.budget_ms <= 10_000:
            raise ValueError(f"budget_ms must be in (0, 10000], got {self.budget_ms}")
        for name in (
            "console_session_idle_s",
            "console_session_max_s",
            "console_signin_per_minute",
            "console_upload_bytes",
            "review_queue_max",
            "review_claim_s",
            "review_keep_days",
            "console_test_max_decisions",
            "webhook_max_attempts",
            "monitor_max_rows",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not self.monitor_interval_s >= 0:
            raise ValueError(
                f"monitor_interval_s must be 0 (off) or more seconds, got {self.monitor_interval_s}"
            )
        if not self.monitor_window_s > 0:
            raise ValueError(f"monitor_window_s must be more than 0 seconds, got {self.monitor_window_s}")
        if not self.webhook_timeout_s > 0:
            raise ValueError(f"webhook_timeout_s must be more than 0 seconds, got {self.webhook_timeout_s}")
        if self.console_url is not None and not self.console_url.startswith(("http://", "https://")):
            raise ValueError(f"console_url must start with http:// or https://, got {self.console_url!r}")
