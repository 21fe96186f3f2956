"""``import tuckerflow`` imports neither torch nor cupy and changes no global backend."""

import subprocess
import sys


def test_import_is_light_and_side_effect_free():
    code = (
        "import sys, tensorly as tl; b = tl.get_backend(); import tuckerflow; "
        "tuckerflow.random_tucker((4, 3, 2), 2, rng=0); "
        "assert 'torch' not in sys.modules, 'torch imported'; "
        "assert 'cupy' not in sys.modules, 'cupy imported'; "
        "assert tl.get_backend() == b, 'backend changed'; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
