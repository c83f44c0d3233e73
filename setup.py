"""setuptools shim: builds the cffi fast path (csrc/) as netstack._fastc."""

from setuptools import setup

setup(cffi_modules=["csrc/build_fast.py:ffibuilder"])
