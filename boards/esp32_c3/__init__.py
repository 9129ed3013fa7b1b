# Board package: esp32_c3 (its board.py is what the firmware sees as `board` on the device).
