"""hyperv-emu: real x86 guest code in an emulated machine built the way Hyper-V is built."""

__version__ = "0.1.0"
