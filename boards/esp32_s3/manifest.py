# Frozen-image manifest for the esp32_s3 board: the stock ESP32_GENERIC_S3 modules plus the pump
# firmware, built with `make firmware BOARD=esp32_s3 MPY_DIR=...` (docs/deploy.md).

include("$(PORT_DIR)/boards/manifest.py")
package("pump", base_path="../../firmware")
package("hal", base_path="../../firmware")
package("link", base_path="../../firmware")
module("app.py", base_path="../../firmware")
module("radio.py", base_path="../../firmware")
module("rig.py", base_path="../../firmware")
# Frozen main.py runs at boot in place of one on the filesystem; board.py becomes `board`.
module("main.py", base_path="../../firmware")
module("board.py")
