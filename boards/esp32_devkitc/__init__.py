# Board package: esp32_devkitc (its board.py is what the firmware sees as `board` on the device).
