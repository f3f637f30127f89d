"""Kernel code of bermo, imported as ``bermo.kernels`` (the source folder is ``kernels/`` at the project root).

Triton kernels (``scalar_mix``) import Triton at module import; the CPU launchers (``scalar_mix_cpu``)
JIT-build their C++ source in ``csrc/`` on first use. Nothing is imported here, so importing the package
needs neither.
"""
