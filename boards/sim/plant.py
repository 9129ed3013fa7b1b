# The bench rig's physics for the virtual pump: plunger and end stop, syringe and line compliance,
# the drug in the line, and injectable stall and occlusion. Integers only, on both runtimes.

from boards.sim import board, hw
from pump.intmath import gcd

# Compliance of the syringe and line, relaxing through the catheter's resistance: the volume the
# plunger pushed comes out of the tip with this time constant (first order, discretised at 1 ms).
TAU_MS = 20_000
# The driver's force limit, as the volume stored in the compliance at that pressure. At the hard
# maximum rate (1 mL/h) about 5.6 uL is stored at TAU_MS, so only an occlusion reaches it.
FORCE_LIMIT_NL = 8_000

_Q = 32  # fixed-point fraction bits of the decay factors
_ONE = 1 << _Q


class Plant(hw.Mechanism):
    """The reference rig: a syringe whose plunger is driven in microsteps by the lead screw, the
    line from it to the catheter tip, and the compliance between them.

    Volumes are kept exactly in units of 1/unit_den nL: one microstep is ustep_u units. The
    syringe holds the simulated implant's reservoir (board.RESERVOIR_NL), so its travel is that
    volume in whole pulses; the plunger at the end of its travel is the end stop.

    Same interface as boards/sim/hw.Mechanism: pulse() -> bool, fail_next(n), jam(), free(); and
    the counters attempts and done. Time comes from clock() (loop ms); bind() sets it later.
    """

    def __init__(self, clock=None, tau_ms=TAU_MS, force_limit_nl=FORCE_LIMIT_NL, travel_nl=None,
                 line_nl=None, line_conc=None, record=True):  # fmt: skip
        cal = board.calibration()
        usteps = cal.usteps_per_pulse
        num = cal.ml_num * 1_000_000  # one pulse is num / ml_den nL
        den = cal.ml_den * usteps
        g = gcd(num, den)
        self.unit_den = den // g  # the volume unit is 1 / unit_den nL
        self.ustep_u = num // g
        self.usteps_per_pulse = usteps
        self.pulse_u = self.ustep_u * usteps
        if travel_nl is None:
            travel_nl = board.RESERVOIR_NL[board.VARIANT]
        # Whole pulses, enough to hold travel_nl.
        self.travel = -(-travel_nl * self.unit_den // self.pulse_u) * usteps  # microsteps
        self.pos = self.travel  # a new rig's syringe is empty: the plunger is at its end stop
        self.conc = board.FIRST_BOOT[1] if line_conc is None else line_conc  # in the syringe
        if line_nl is None:
            line_nl = board.PUMP_DEAD_VOLUME_NL
        # The line is plug flow, oldest drug first: [units, ug/mL] segments. It starts primed
        # with the commissioning strength.
        self._line_u = line_nl * self.unit_den if line_nl > 0 else 0
        self._line = [[self._line_u, self.conc]] if self._line_u else []
        self.tau_ms = tau_ms
        self.limit_u = force_limit_nl * self.unit_den
        self._pow = _powers(tau_ms)
        self._cache = {}
        self.clock = clock
        self.t = self._now()  # time of the last change of the compliance state
        self.pushed_u = 0  # out of the syringe, all time
        self.stored_u = 0  # in the compliance at time t
        self.dose_num = 0  # drug pushed out of the line's tip end: units x ug/mL, all time
        super().__init__()  # attempts, done, and the injected stall (fail_next, jam, free)
        self.lost = 0  # pulses whose steps were lost against the force limit
        self.end_stops = 0  # pulses that ran into the end stop
        self.occluded = False
        # Dose of every confirmed pulse (units x ug/mL), for the runner to drain; None: not kept.
        self.doses = [] if record else None

    # ---- time ----

    def bind(self, clock):
        """Take time from clock() (loop ms) from now on."""
        self._settle(self._now())
        self.clock = clock
        self.t = self._now()

    def _now(self):
        return 0 if self.clock is None else self.clock()

    def _factor(self, n):
        # (1 - 1/tau)^n in Q32, by squaring: the decay over n ms, computed the same way
        # whatever the order of calls (it depends on n only).
        f = self._cache.get(n)
        if f is not None:
            return f
        f = _ONE
        k = 0
        m = n
        pw = self._pow
        while m:
            if k >= len(pw):
                f = 0
                break
            if m & 1:
                f = f * pw[k] >> _Q
            m >>= 1
            k += 1
        if len(self._cache) > 64:
            self._cache = {}
        self._cache[n] = f
        return f

    def _stored_at(self, t):
        if t < self.t:
            raise ValueError("the plant is asked about %d ms, before its last change" % t)
        if self.occluded or t == self.t or not self.stored_u:
            return self.stored_u
        return self.stored_u * self._factor(t - self.t) >> _Q

    def _settle(self, t):
        self.stored_u = self._stored_at(t)
        self.t = t

    # ---- the mechanism interface ----

    def pulse(self):
        """One pulse of usteps_per_pulse microsteps. True only if the plunger moved all of them."""
        if self._stalls():
            return False
        self._settle(self._now())
        move = self.travel - self.pos  # microsteps this pulse can make before the end stop
        if move > self.usteps_per_pulse:
            move = self.usteps_per_pulse
        if self.stored_u + move * self.ustep_u > self.limit_u:
            # The force limit: the motor loses its steps and the rotor falls back to its detent
            # (a full step), so the plunger stays where it was.
            self.lost += 1
            return False
        if move < self.usteps_per_pulse:
            # The plunger runs into the end stop: what travel was left goes, the pulse fails.
            self.end_stops += 1
            if move:
                self._push(move * self.ustep_u)
                self.pos = self.travel
            return False
        dose = self._push(self.pulse_u)
        self.pos += self.usteps_per_pulse
        self.done += 1
        if self.doses is not None:
            self.doses.append(dose)
        return True

    def _push(self, u):
        # u units leave the syringe: they enter the line at the syringe's strength and push as
        # much out of its tip end into the compliance. Returns that drug (units x ug/mL).
        self.pushed_u += u
        self.stored_u += u
        line = self._line
        dose = 0
        left = u
        while left and line:
            seg = line[0]
            take = seg[0] if seg[0] < left else left
            dose += take * seg[1]
            seg[0] -= take
            left -= take
            if not seg[0]:
                line.pop(0)
        # A push longer than the line (or no line at all): the rest is the syringe's drug.
        dose += left * self.conc
        keep = u if u < self._line_u else self._line_u  # the line's length never changes
        if keep:
            if line and line[-1][1] == self.conc:
                line[-1][0] += keep
            else:
                line.append([keep, self.conc])
        self.dose_num += dose
        return dose

    # ---- faults ----

    def occlude(self):
        """The outlet is blocked from now: nothing leaves the tip, pressure builds per pulse."""
        self._settle(self._now())
        self.occluded = True

    def clear_occlusion(self):
        """The outlet opens: the stored volume relaxes out of the tip from now."""
        self._settle(self._now())
        self.occluded = False

    # ---- the syringe ----

    def refill(self, fill_nl, conc_ug_per_ml):
        """The clinician empties the syringe and fills fill_nl of drug at conc_ug_per_ml (whole
        microsteps, rounded down). Returns the residual taken out, in nL (rounded down)."""
        usteps = fill_nl * self.unit_den // self.ustep_u
        if fill_nl < 0 or usteps > self.travel:
            raise ValueError("a fill of %d nL is beyond the syringe's travel" % fill_nl)
        residual = self.content_nl()
        self.pos = self.travel - usteps
        self.conc = conc_ug_per_ml
        return residual

    # ---- readings (nL, rounded down) ----

    def content_nl(self):
        """Drug left in the syringe."""
        return (self.travel - self.pos) * self.ustep_u // self.unit_den

    def pushed_nl(self):
        """Volume the plunger pushed out of the syringe, all time."""
        return self.pushed_u // self.unit_den

    def out_u(self, t_ms=None):
        """Volume that left the catheter tip up to t_ms (not before the last pulse or fault),
        in exact units; out_u + stored_u == pushed_u at every instant."""
        t = self._now() if t_ms is None else t_ms
        return self.pushed_u - self._stored_at(t)

    def out_nl(self, t_ms=None):
        """Volume that left the catheter tip up to t_ms, in nL (rounded down)."""
        return self.out_u(t_ms) // self.unit_den

    def stored_nl(self, t_ms=None):
        """Volume held in the compliance at t_ms, in nL (rounded down)."""
        t = self._now() if t_ms is None else t_ms
        return self._stored_at(t) // self.unit_den

    def line(self):
        """The drug in the line, tip end first: [(nL, ug/mL)] (rounded down)."""
        return [(seg[0] // self.unit_den, seg[1]) for seg in self._line]


def _powers(tau_ms):
    # (1 - 1/tau)^(2^k) in Q32 for k = 0, 1, ... until it reaches zero.
    if tau_ms < 1:
        raise ValueError("the compliance time constant must be at least 1 ms")
    p = _ONE * (tau_ms - 1) // tau_ms
    out = []
    while p:
        out.append(p)
        p = p * p >> _Q
    return out
