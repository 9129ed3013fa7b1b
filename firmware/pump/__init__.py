"""Pure dosing core of the ITB pump: no hardware imports; runs on MicroPython and CPython."""
