# Board package: esp32_s3 (its board.py is what the firmware sees as `board` on the device).
