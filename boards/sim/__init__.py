# The simulated board: the reference syringe rig, run on the host.
