"""Human-readable progress: the per-round table and byte sizes."""

from __future__ import annotations


def human_bytes(size: float) -> str:
    """Decimal units (1 KB = 1000 B), as network traffic is usually quoted."""
    if abs(size) < 1000:
        return f"{size:.0f} B"
    for unit in ("KB", "MB"):
        size /= 1000
        if abs(size) < 1000:
            return f"{size:.1f} {unit}"
    return f"{size / 1000:.1f} GB"


LARGE_UPDATE_SHARE = 0.01  # of full fine-tuning's values: above it, a sparse update is large


def update_size(method: str, values: int, full_values: int, codec: str) -> str:
    """The values one update carries, and their share of what full fine-tuning sends."""
    return (f"method {method}: {values:,} values per update ({codec}), "
            f"{values / full_values:.2%} of full fine-tuning's {full_values:,}")


def large_update_warning(method: str, values: int, full_values: int) -> str | None:
    """A line that stands out when a method other than full fine-tuning sends over 1% of
    what full fine-tuning sends, else None."""
    share = values / full_values
    if not LARGE_UPDATE_SHARE < share < 1:
        return None
    return (f"WARNING: {method} sends {share:.1%} of full fine-tuning's values per update, "
            f"over {LARGE_UPDATE_SHARE:.0%}. Check the settings that size it: hiwi-target "
            f"weight with hiwi-sync merged sends the whole matrix change (use hiwi-sync "
            f"adapter); sparsity, mask-k, lora-rank, shira-r (shira-mask random), "
            f"untrained-pooler train.")


def table_header(metric: str, private: bool = False) -> str:
    """The column names; `private` adds epsilon, the privacy spent so far."""
    epsilon = f" | {'epsilon':>8}" if private else ""
    return (
        f"{'round':>5} | {metric:>22} | {'loss':>7} | {'up/client':>10} | "
        f"{'down/client':>11} | {'total MB':>8} | {'clients':>7} | {'s':>6}{epsilon}"
    )


def table_row(record: dict, metric: str, cumulative_bytes: float) -> str:
    value = record["metrics"].get(metric, float("nan"))
    epsilon = f" | {record['epsilon']:>8.3f}" if "epsilon" in record else ""
    return (
        f"{record['round']:>5} | {value:>22.4f} | {record['loss']:>7.4f} | "
        f"{human_bytes(record['bytes_up_per_client']):>10} | "
        f"{human_bytes(record['bytes_down_per_client']):>11} | "
        f"{cumulative_bytes / 1e6:>8.2f} | {len(record['clients']):>7} | {record['wall_s']:>6.1f}"
        f"{epsilon}"
    )


def upload_comparison(upload_per_client: float, full_bytes: float) -> str:
    """The one line that says what the method saves against dense fine-tuning."""
    ratio = full_bytes / upload_per_client if upload_per_client else float("inf")
    return (
        f"upload per client per round: {human_bytes(upload_per_client)} vs "
        f"{human_bytes(full_bytes)} for full fine-tuning, {ratio:,.0f}x less"
    )
