# The pure core of the pump firmware: dosing, limits and their formats, with no hardware imports.
