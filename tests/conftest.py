"""Test-wide setup.

Triton kernels run on the CPU only through Triton's interpreter, which must be switched on before
``triton`` is first imported; the package itself never does this at run time.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
