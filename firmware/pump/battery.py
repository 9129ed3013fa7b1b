# Battery monitor: calibrated voltage samples plus a charge budget, giving OK -> ERI -> EOS with
# debounce and hysteresis, and a projected replacement date. Pure: samples and time come in.

from pump import limits as L
from pump.compat import const

OK = const(0)
ERI = const(1)  # elective replacement indicator
EOS = const(2)  # end of service
STATE_NAMES = ("ok", "eri", "eos")

NC_PER_UAH = const(3_600_000)  # 1 uAh = 3.6 mC = 3.6e6 nC
MARKS = const(8)  # daily marks kept: the average current is over up to the last 7 days


def _nolog(*_args):
    pass


class Cell:
    """A cell as the board defines it. Voltages in mV at the battery terminals, at rest.

    eos_reserve_pct: share of the capacity left at EOS by the charge budget (the hardware keeps
    running on it). full_mv: for a rechargeable cell, a rest voltage that means it was charged
    (the charge budget starts again); 0 for a primary cell. ocv and r_mohm describe the cell
    for simulation only: ocv is [(depth of discharge in per mille, mV)], ascending.
    """

    __slots__ = ("name", "capacity_uah", "eri_mv", "eos_mv", "hyst_mv", "eos_reserve_pct",
                 "full_mv", "ocv", "r_mohm")  # fmt: skip

    def __init__(self, name, capacity_uah, eri_mv, eos_mv, hyst_mv, eos_reserve_pct, full_mv=0,
                 ocv=(), r_mohm=0):  # fmt: skip
        if not eos_mv < eri_mv:
            raise ValueError("the EOS threshold must be below the ERI threshold")
        self.name = name
        self.capacity_uah = capacity_uah
        self.eri_mv = eri_mv
        self.eos_mv = eos_mv
        self.hyst_mv = hyst_mv
        self.eos_reserve_pct = eos_reserve_pct
        self.full_mv = full_mv
        self.ocv = ocv
        self.r_mohm = r_mohm

    def ocv_mv(self, dod_ppm):
        """Open-circuit voltage at a depth of discharge in parts per million (simulation)."""
        pts = self.ocv
        if dod_ppm <= pts[0][0] * 1000:
            return pts[0][1]
        for i in range(1, len(pts)):
            a, va = pts[i - 1]
            b, vb = pts[i]
            if dod_ppm <= b * 1000:
                return va + (vb - va) * (dod_ppm - a * 1000) // ((b - a) * 1000)
        return pts[-1][1]


class Energy:
    """The charge model: quiescent current, charge per motor pulse, current while the radio is
    on. margin_pct derates the remaining budget for the model's own uncertainty."""

    __slots__ = ("quiescent_ua", "pulse_nc", "radio_ua", "margin_pct")

    def __init__(self, quiescent_ua, pulse_nc, radio_ua, margin_pct):
        self.quiescent_ua = quiescent_ua
        self.pulse_nc = pulse_nc
        self.radio_ua = radio_ua
        self.margin_pct = margin_pct


class AdcCal:
    """Battery mV from the mean ADC reading in uV: mV = uV * num / (den * 1000) + offset_mv.
    The ratio holds the divider and the per-board two-point gain correction."""

    __slots__ = ("num", "den", "offset_mv")

    def __init__(self, num, den, offset_mv=0):
        self.num = num
        self.den = den
        self.offset_mv = offset_mv

    def mv(self, sum_uv, count):
        return (sum_uv * self.num) // (count * self.den * 1000) + self.offset_mv


def two_point(uv_a, mv_a, uv_b, mv_b):
    """AdcCal through two measured points (ADC reading in uV, battery mV on a meter)."""
    num = (mv_b - mv_a) * 1000
    den = uv_b - uv_a
    if den <= 0 or num <= 0:
        raise ValueError("two distinct ascending calibration points are needed")
    return AdcCal(num, den, mv_a - uv_a * num // (den * 1000))


class Monitor:
    """Battery state from samples taken with the motor idle, and from the charge budget.

    ERI: the rest voltage below eri_mv in `debounce` consecutive samples, or the projected life
    (derated remaining budget at the recent average current) under the ERI margin. EOS: below
    eos_mv in `debounce` samples, or the budget spent down to the reserve. A primary cell only
    moves forward; a rechargeable one moves back only after `debounce` samples above the
    threshold plus the hysteresis.
    """

    def __init__(self, cell, energy, adc, log=None, eri_margin_days=90, debounce=3,
                 interval_ms=3_600_000, now_ms=0):  # fmt: skip
        self.cell = cell
        self.energy = energy
        self.adc = adc
        self.log = log or _nolog
        self.eri_margin_ms = eri_margin_days * L.DAY_MS
        self.debounce = debounce
        self.interval_ms = interval_ms
        self.state = OK
        self.pulses = 0  # pulses not yet folded into used_nc (the per-pulse path only counts)
        self.radio_ms = 0
        self.used_nc = 0
        self.mv = 0  # last averaged sample
        self._folded_ms = now_ms
        self._last_sample_ms = now_ms - interval_ms
        self._below = [0, 0, 0]  # consecutive samples below the ERI / EOS threshold
        self._above = [0, 0, 0]  # consecutive samples above threshold + hysteresis
        self._full = 0
        # Up to MARKS daily marks (ms, used_nc), oldest first, for the average current. Two
        # fixed lists that are shifted in place: a daily mark never allocates, so the heap does
        # not grow over the first week.
        self._mark_ms = [0] * MARKS
        self._mark_nc = [0] * MARKS
        self._n_marks = 1
        self._set_marks(((now_ms, 0),))

    # ---- accounting ----

    def on_pulse(self):
        self.pulses += 1

    def radio_on(self, ms):
        self.radio_ms += ms

    def fold(self, now_ms):
        """Add the charge used since the last fold."""
        e = self.energy
        dt = now_ms - self._folded_ms
        self.used_nc += e.quiescent_ua * dt + e.pulse_nc * self.pulses + e.radio_ua * self.radio_ms
        self.pulses = 0
        self.radio_ms = 0
        self._folded_ms = now_ms
        n = self._n_marks
        if now_ms - self._mark_ms[n - 1] >= L.DAY_MS:
            ms = self._mark_ms
            nc = self._mark_nc
            if n == MARKS:
                for i in range(MARKS - 1):
                    ms[i] = ms[i + 1]
                    nc[i] = nc[i + 1]
                n -= 1
            ms[n] = now_ms
            nc[n] = self.used_nc
            self._n_marks = n + 1

    def _set_marks(self, marks):
        if not 1 <= len(marks) <= MARKS:
            raise ValueError("stored battery state out of range")
        for i, (ms, nc) in enumerate(marks):
            self._mark_ms[i] = ms
            self._mark_nc[i] = nc
        self._n_marks = len(marks)

    def marks(self):
        """The daily marks (ms, used_nc), oldest first."""
        return [(self._mark_ms[i], self._mark_nc[i]) for i in range(self._n_marks)]

    def budget_nc(self):
        """Charge left before the EOS reserve."""
        cap = self.cell.capacity_uah * NC_PER_UAH
        return cap - cap * self.cell.eos_reserve_pct // 100 - self.used_nc

    def average_ua_x1000(self, now_ms):
        """Recent average current in nA, over up to the last 7 days (in the first day, the draw
        so far or the quiescent current, whichever is higher)."""
        t0 = self._mark_ms[0]
        u0 = self._mark_nc[0]
        dt = now_ms - t0
        if dt >= L.DAY_MS:
            return (self.used_nc - u0) * 1000 // dt
        # Less than a day of history: the draw so far, but never below the model's floor.
        q = self.energy.quiescent_ua * 1000
        if dt > 0:
            seen = (self.used_nc - u0) * 1000 // dt
            if seen > q:
                return seen
        return q

    def life_ms(self, now_ms):
        """Projected time to EOS at the recent average current, on the derated budget."""
        left = self.budget_nc() * (100 - self.energy.margin_pct) // 100
        if left <= 0:
            return 0
        avg = self.average_ua_x1000(now_ms)
        if avg <= 0:
            return None
        return left * 1000 // avg

    def snapshot(self):
        return [self.cell.name, self.state, self.pulses, self.radio_ms, self.used_nc, self.mv,
                self._folded_ms, self._last_sample_ms, list(self._below), list(self._above),
                self._full, [list(m) for m in self.marks()]]  # fmt: skip

    def restore(self, s):
        (name, state, pulses, radio_ms, used, mv, folded, last, below, above, full,
         marks) = s  # fmt: skip
        if name != self.cell.name:
            raise ValueError("stored battery state is for another cell")
        if state not in (OK, ERI, EOS) or used < 0:
            raise ValueError("stored battery state out of range")
        self.state = state
        self.pulses = pulses
        self.radio_ms = radio_ms
        self.used_nc = used
        self.mv = mv
        self._folded_ms = folded
        self._last_sample_ms = last
        self._below = list(below)
        self._above = list(above)
        self._full = full
        self._set_marks(marks)

    # ---- sampling ----

    def due(self, now_ms):
        return now_ms - self._last_sample_ms >= self.interval_ms

    def next_due_ms(self):
        return self._last_sample_ms + self.interval_ms

    def projected_eos_ms(self, now_ms):
        """The projected replacement date: when the derated budget reaches EOS at the recent
        average current (None only if nothing is drawn)."""
        self.fold(now_ms)
        life = self.life_ms(now_ms)
        return None if life is None else now_ms + life

    def sample(self, now_ms, sum_uv, count):
        """One averaged reading taken with the motor idle. Returns (old, new) on a state change,
        else None."""
        self._last_sample_ms = now_ms
        self.fold(now_ms)
        mv = self.adc.mv(sum_uv, count)
        self.mv = mv
        c = self.cell
        self._count(ERI, mv < c.eri_mv, mv >= c.eri_mv + c.hyst_mv)
        self._count(EOS, mv < c.eos_mv, mv >= c.eos_mv + c.hyst_mv)
        if c.full_mv:
            self._full = self._full + 1 if mv >= c.full_mv else 0
            if self._full >= self.debounce:
                # A rechargeable cell was charged (or is on its charger): its budget starts
                # again, and keeps starting again for as long as it reads full.
                if self._full == self.debounce:
                    self.log("battery_charged", mv)
                self.used_nc = 0
                self._set_marks(((now_ms, 0),))
        life = self.life_ms(now_ms)
        new = self.state
        n = self.debounce
        if self._below[EOS] >= n or self.budget_nc() <= 0:
            new = EOS
        elif self._below[ERI] >= n or (life is not None and life < self.eri_margin_ms):
            if new == OK:
                new = ERI
        if c.full_mv and new == self.state:
            # Back only on the voltage, debounced, clear of the threshold by the hysteresis.
            if self.state == EOS and self._above[EOS] >= n and self.budget_nc() > 0:
                new = ERI
            if new == ERI and self._above[ERI] >= n and (life is None or
                                                          life >= self.eri_margin_ms):  # fmt: skip
                new = OK
        if new == self.state:
            return None
        old = self.state
        self.state = new
        self.log("battery_state", STATE_NAMES[old], STATE_NAMES[new], mv,
                 -1 if life is None else life // L.DAY_MS)  # fmt: skip
        return (old, new)

    def _count(self, which, below, above):
        self._below[which] = self._below[which] + 1 if below else 0
        self._above[which] = self._above[which] + 1 if above else 0

    def loads_cut(self):
        """At EOS the radio's advertising duty and other non-essential loads are cut."""
        return self.state == EOS
