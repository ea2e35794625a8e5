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


def _env(name: str, default: str) -> str:
    return os.environ.get(f"ANTIFRAUD_{name}", default)


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
