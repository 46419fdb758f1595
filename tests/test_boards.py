"""tinykd.boards: the shipped database and users' own YAML files."""

import pytest

from tinykd.boards import CORES, load_boards
from tinykd.errors import ConfigError

REQUIRED_IDS = {"nucleo-l4r5zi", "arduino-nano-33-ble", "nrf5340dk", "ek-ra6m4", "nucleo-u575zi-q", "nucleo-h743zi2",
                "stm32f746g-disco", "ek-ra8d1", "rpi-pico", "teensy-41"}
MINE = ("my-board:\n  mcu: STM32G474\n  core: cortex-m4\n  clock_mhz: 170\n  flash_bytes: 524288\n"
        "  ram_bytes: 131072\n  arena_ram_bytes: 98304\n  source: ST DS12288\n")


def test_every_required_board_with_its_memories_and_source():
    boards = load_boards()
    assert REQUIRED_IDS <= boards.keys()
    for board in boards.values():
        assert board.core in CORES and board.source
        assert 0 < board.arena_ram_bytes <= board.ram_bytes and board.flash_bytes > 0
    assert (boards["ek-ra8d1"].core, boards["ek-ra8d1"].clock_mhz, boards["ek-ra8d1"].simd) == (
        "cortex-m85", 480, "helium")
    assert (boards["rpi-pico"].core, boards["rpi-pico"].clock_mhz, boards["rpi-pico"].simd) == (
        "cortex-m0plus", 133, "none")


def test_user_boards_are_added_with_defaults(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(MINE)
    boards = load_boards(path)
    assert REQUIRED_IDS <= boards.keys()
    mine = boards["my-board"]
    assert (mine.clock_mhz, mine.arena_ram_bytes, mine.simd, mine.kernels) == (170, 98304, "dsp", "cmsis-nn")


@pytest.mark.parametrize("change, message", [
    (("clock_mhz: 170", "clok_mhz: 170"), r"my-board\.clok_mhz: unknown key \(did you mean 'clock_mhz'\?\)"),
    (("core: cortex-m4", "core: esp32"), r"my-board\.core: must be one of"),
    (("flash_bytes: 524288", "flash_bytes: lots"), r"my-board\.flash_bytes: expected int"),
    (("arena_ram_bytes: 98304", "arena_ram_bytes: 262144"), r"more than ram_bytes"),
    (("  source: ST DS12288\n", ""), r"my-board: missing source"),
])
def test_bad_user_boards_name_the_file_and_key(tmp_path, change, message):
    path = tmp_path / "mine.yaml"
    path.write_text(MINE.replace(*change))
    with pytest.raises(ConfigError, match=message) as error:
        load_boards(path)
    assert str(error.value).startswith(str(path))
