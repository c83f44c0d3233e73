"""cffi build script for the C fast path (API mode, out of line): netstack._fastc."""

from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent

ffibuilder = FFI()
ffibuilder.cdef((HERE / "fast.h").read_text())
ffibuilder.set_source(
    "netstack._fastc",
    '#include <stdint.h>\n#include <stddef.h>\n#include "fast.h"\n',
    # relative paths: setuptools refuses absolute ones
    sources=[
        "csrc/fast.c",
        "csrc/flow.c",
        "csrc/flow_to_guest.c",
        "csrc/flow_table.c",
        "csrc/flow_syn.c",
        "csrc/flow_forward.c",
        "csrc/flow_time_wait.c",
        "csrc/udp.c",
        "csrc/udp_to_guest.c",
        "csrc/dns.c",
        "csrc/loop.c",
    ],
    include_dirs=["csrc"],
    extra_compile_args=["-O2", "-Wall", "-Wextra"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
