# An independent, deliberately naive model of the programmed volume, in exact fractions.
# Tests drive the engine and this model with the same accepted commands and compare.

from fractions import Fraction as F

from pump import limits as L
from pump import rx as RX

DAY = L.DAY_MS


class Programmed:
    """Programmed volume (in pulses, as a Fraction) as a function of time, per the docs.

    Semantics written from docs/dosing.md, not from the engine: basal by time of day at the
    effective concentration; each bolus at ceil(dose * 8.64e6 / duration) rate units until its
    exact dose is in; the bridge ends at the first millisecond at which the programmed volume
    since the change covers the dead-volume pulses.
    """

    def __init__(self, calib, conc):
        self.q_ml = F(calib.ml_num, calib.ml_den)
        self.calib = calib
        self.conc = conc
        self.next_conc = conc
        self.bridge_target = None  # programmed pulses at which the bridge ends
        self.mode = "stopped"
        self.rx = None
        self.streams = []  # [start_ms, rate_ng_per_day, end_ms (Fraction)]
        self.t = 0
        self.p = F(0)
        self.fault = False
        self.lim = None

    # pulses per ms for a dose rate in ng/day at concentration c (ug/mL)
    def _ppms(self, rate_ng_per_day, conc):
        ml_per_day = F(rate_ng_per_day, 1000 * conc)
        return ml_per_day / DAY / self.q_ml

    def _rate_ng(self, t):
        if self.fault:
            return 0
        tod = t % DAY
        if self.mode == "program":
            base = self.rx.step_rate_at(tod // L.MIN_MS)
        elif self.mode == "minimum":
            base = L.HARD_MIN_RATE_NL_PER_DAY * self.conc // 1000
        else:
            base = 0
        for s in self.streams:
            if s[0] <= t < s[2]:
                base += s[1]
        return base

    def _next_break(self, t):
        # Next time strictly after t at which the rate may change.
        cands = [(t // DAY + 1) * DAY]
        tod = t % DAY
        day0 = t - tod
        if self.mode == "program" and not self.fault:
            for start, _r in self.rx.steps:
                if start * L.MIN_MS > tod:
                    cands.append(day0 + start * L.MIN_MS)
            for p in self.rx.periodic:
                if p[0] * L.MIN_MS > tod:
                    cands.append(day0 + p[0] * L.MIN_MS)
        for s in self.streams:
            if s[2] > t:
                cands.append(s[2])
        return min(cands)

    def _at_instant(self, t):
        # Events at integer time t: streams that ended, periodic boluses that start.
        self.streams = [s for s in self.streams if s[2] > t]
        if self.mode == "program" and not self.fault:
            for start, dose, dur_s in self.rx.periodic:
                if t % DAY == start * L.MIN_MS:
                    self.add_stream(dose, dur_s * 1000, "periodic")

    def advance(self, t_end):
        """Integrate up to integer time t_end (inclusive of events at t_end)."""
        while self.t < t_end:
            nb = self._next_break(self.t)
            seg_end = min(F(t_end), F(nb))
            rate_ng = self._rate_ng(self.t)
            # While bridging, the switch happens at the first integer ms where p >= target.
            if self.bridge_target is not None and rate_ng:
                ppms = self._ppms(rate_ng, self.conc)
                cross = self.t + (self.bridge_target - self.p) / ppms
                switch = -((-cross.numerator) // cross.denominator)  # ceil
                if switch <= seg_end:
                    self.p += ppms * (switch - self.t)
                    self.t = switch
                    self.conc = self.next_conc
                    self.bridge_target = None
                    if self.t == int(self.t):
                        self.t = int(self.t)
                        self._at_instant(self.t)
                    continue
            self.p += self._ppms(rate_ng, self.conc) * (seg_end - self.t)
            self.t = seg_end
            if self.t.denominator == 1:
                self.t = int(self.t)
                self._at_instant(self.t)

    def p_at(self, t):
        self.advance(t)
        return self.p

    # ---- accepted commands (applied at the current time, after advance) ----

    def add_stream(self, dose_ng, duration_ms, kind="user"):
        rate_ru = RX.bolus_rate_ru(dose_ng, duration_ms)
        total_rums = dose_ng * (DAY // L.RATE_RES_NG_PER_DAY)
        self.streams.append([self.t, rate_ru * L.RATE_RES_NG_PER_DAY,
                             self.t + F(total_rums, rate_ru), kind])  # fmt: skip

    def cancel_periodic(self):
        self.streams = [s for s in self.streams if s[3] != "periodic"]

    def program(self, rx):
        self.cancel_periodic()
        self.rx = rx
        self.mode = "program"
        for start, dose, dur_s in rx.periodic:
            if self.t % DAY == start * L.MIN_MS:
                self.add_stream(dose, dur_s * 1000, "periodic")

    def set_mode(self, mode):
        self.streams = []  # minimum rate and stopped end every bolus
        self.mode = mode

    def prime(self, volume_nl, max_rate_nl_per_day):
        rate_ru = max_rate_nl_per_day * self.conc // 10000
        total_rums = volume_nl * self.conc * 8640
        self.streams.append([self.t, rate_ru * L.RATE_RES_NG_PER_DAY,
                             self.t + F(total_rums, rate_ru), "prime"])  # fmt: skip

    def change_concentration(self, rx, dead_volume_nl):
        pulses = self.calib.pulses_for_nl(dead_volume_nl)
        if self.rx is not None:
            self.rx = rx
        self.next_conc = rx.conc_ug_per_ml
        if pulses == 0:
            self.conc = self.next_conc
        else:
            delivered = self.p.numerator // self.p.denominator
            self.bridge_target = delivered + pulses
