# Plots of the virtual pump's report folder (hourly.csv, summary.json): dose per hour against the
# programme, the reservoir with its low threshold and refills, the battery and its projection.
# Run by tools/sim.py; by hand: python tools/sim_report.py build/sim

import csv
import json
import sys
from pathlib import Path

DAY_MS = 86_400_000
HOUR_MS = 3_600_000


def read_hourly(folder):
    with open(Path(folder) / "hourly.csv", newline="") as f:
        return list(csv.DictReader(f))


def _marks(ax, summary, what=("refills", "resets", "faults")):
    # Refills, resets and faults as vertical lines, labelled once each.
    styles = {
        "refills": ("tab:green", "-", "refill"),
        "resets": ("tab:red", ":", "reset"),
        "faults": ("tab:purple", "--", "fault"),
    }
    for key in what:
        color, ls, label = styles[key]
        for i, r in enumerate(summary.get(key, [])):
            ax.axvline(r["t_ms"] / DAY_MS, color=color, ls=ls, lw=1,
                       label=label if i == 0 else None)  # fmt: skip


def plot(folder):
    """Draw dose.png, reservoir.png and battery.png into folder; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    rows = read_hourly(folder)
    s = json.loads((folder / "summary.json").read_text())
    days = [int(r["t_ms"]) / DAY_MS for r in rows]
    start = [(int(r["t_ms"]) - HOUR_MS) / DAY_MS for r in rows]
    title = s.get("title", "")
    files = []

    # Dose per hour, delivered against programmed, and per day.
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(11, 7), sharex=True)
    delivered = [int(r["delivered_pg"]) / 1e6 for r in rows]
    programmed = [int(r["programmed_pg"]) / 1e6 for r in rows]
    ax1.step(start, delivered, where="post", lw=0.8, color="tab:blue",
             label="delivered (drug out of the line)")  # fmt: skip
    ax1.step(start, programmed, where="post", lw=1.2, color="black", alpha=0.6,
             label="programmed")  # fmt: skip
    _marks(ax1, s)
    ax1.set_ylabel("dose per hour (ug)")
    ax1.set_title("Delivered dose against the programme\n" + title, fontsize=10)
    ax1.legend(loc="upper right", fontsize=8)
    n_days = s["days"]
    dd = [0.0] * n_days
    pd = [0.0] * n_days
    for i in range(len(rows)):
        d = min(i // 24, n_days - 1)
        dd[d] += delivered[i]
        pd[d] += programmed[i]
    x = [d + 0.5 for d in range(n_days)]
    ax2.bar(x, dd, width=0.8, color="tab:blue", alpha=0.7, label="delivered")
    ax2.plot(x, pd, "k_", ms=14, mew=2, label="programmed")
    _marks(ax2, s)
    ax2.set_ylabel("dose per day (ug)")
    ax2.set_xlabel("day of the run")
    ax2.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    files.append(folder / "dose.png")
    fig.savefig(files[-1], dpi=100)
    plt.close(fig)

    # The reservoir: the pump's estimate, the syringe's truth, the low threshold, refills.
    res = s["reservoir"]
    fig, ax = plt.subplots(figsize=(11, 4.5))
    ax.plot(days, [int(r["reservoir_nl"]) / 1e6 for r in rows], color="tab:blue",
            label="pump's estimate")  # fmt: skip
    ax.plot(days, [int(r["syringe_nl"]) / 1e6 for r in rows], color="tab:orange", ls="--",
            lw=0.8, label="in the syringe (plant)")  # fmt: skip
    ax.axhline(res["low_threshold_nl"] / 1e6, color="tab:red", ls="--", lw=1,
               label="low-reservoir alarm threshold")  # fmt: skip
    low = [d for d, r in zip(days, rows, strict=True) if "reservoir_low" in r["alarms"]]
    if low:
        ax.plot(low, [res["low_threshold_nl"] / 1e6] * len(low), "r|", ms=8,
                label="low-reservoir alarm latched")  # fmt: skip
    for r in s["refills"]:
        if not r["refused"]:
            ax.annotate("refill %.1f mL at %d ug/mL" % (r["fill_nl"] / 1e6, r["strength_to"]),
                        (r["t_ms"] / DAY_MS, r["fill_nl"] / 1e6), fontsize=8,
                        xytext=(5, -12), textcoords="offset points")  # fmt: skip
    _marks(ax, s, ("refills",))
    ax.set_ylim(0, res["capacity_nl"] / 1e6 * 1.05)
    ax.set_ylabel("reservoir (mL)")
    ax.set_xlabel("day of the run")
    ax.set_title("Reservoir", fontsize=10)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    files.append(folder / "reservoir.png")
    fig.savefig(files[-1], dpi=100)
    plt.close(fig)

    # The battery: measured voltage with its thresholds, and the charge budget's projection.
    bt = s["battery"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.5))
    mv = [(d, int(r["battery_mv"])) for d, r in zip(days, rows, strict=True)
          if int(r["battery_mv"])]  # fmt: skip
    if mv:
        ax1.plot([m[0] for m in mv], [m[1] for m in mv], color="tab:blue",
                 label="measured by the pump")  # fmt: skip
    ax1.plot(days, [int(r["cell_mv"]) for r in rows], color="tab:orange", ls="--", lw=0.8,
             label="cell (plant)")  # fmt: skip
    ax1.axhline(bt["eri_mv"], color="tab:orange", ls=":", label="ERI (replace within 90 d)")
    ax1.axhline(bt["eos_mv"], color="tab:red", ls=":", label="EOS (replace now)")
    ax1.set_xlabel("day of the run")
    ax1.set_ylabel("battery (mV)")
    ax1.set_title("Battery voltage", fontsize=10)
    ax1.legend(loc="lower left", fontsize=8)
    cap = bt["capacity_uah"] / 1000
    used = [int(r["charge_used_uah"]) / 1000 for r in rows]
    ax2.plot(days, [cap - u for u in used], color="tab:blue", label="charge left (pump's model)")
    if bt["projected_replacement_day"]:
        end = bt["projected_replacement_day"] - 1
        left_now = cap - bt["charge_used_uah"] / 1000
        ax2.plot([days[-1], end], [left_now, bt["charge_at_replacement_uah"] / 1000],
                 color="tab:blue", ls="--",
                 label="projection: replace on %s" % bt["projected_replacement"])  # fmt: skip
        ax2.axvline(end, color="tab:red", ls=":", lw=1)
    ax2.set_ylim(0, cap * 1.05)
    ax2.set_xlabel("day of the run")
    ax2.set_ylabel("charge (mAh)")
    ax2.set_title("Charge budget and projected replacement", fontsize=10)
    ax2.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    files.append(folder / "battery.png")
    fig.savefig(files[-1], dpi=100)
    plt.close(fig)
    return files


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python tools/sim_report.py REPORT_FOLDER", file=sys.stderr)
        return 2
    folder = Path(argv[0])
    if not (folder / "hourly.csv").is_file() or not (folder / "summary.json").is_file():
        print("error: %s holds no virtual pump report (hourly.csv, summary.json)." % folder,
              file=sys.stderr)  # fmt: skip
        return 2
    for p in plot(folder):
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
