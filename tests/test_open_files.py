"""The worker raises its soft open-files limit to the hard one, so that hundreds of supervised
engines (a pidfd and a probe connection each) do not run into a default soft limit of 1024."""

import subprocess
import sys

PROBE = (
    "import resource; from berth.worker.open_files import raise_open_files_limit; "
    "print(resource.getrlimit(resource.RLIMIT_NOFILE)[1], raise_open_files_limit(), "
    "resource.getrlimit(resource.RLIMIT_NOFILE)[0])"
)


def test_a_low_soft_limit_is_raised_to_the_hard_one():
    out = subprocess.run(
        ["sh", "-c", f'ulimit -Sn 256 && exec "{sys.executable}" -c "{PROBE}"'],
        capture_output=True, text=True, check=True,
    ).stdout.split()
    hard, returned, soft = (int(x) if x.isdigit() else x for x in out)
    assert returned == soft > 256
    assert soft == min(hard, 1 << 20) if isinstance(hard, int) else soft == 1 << 20

