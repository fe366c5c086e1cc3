"""Declares the compiled extensions only; metadata lives in pyproject.toml."""
from Cython.Build import cythonize
from setuptools import Extension, setup

EXTENSIONS = [
    Extension("raftsqlite._ccodec", ["ext/_ccodec.pyx"], extra_compile_args=["-O3"]),
    Extension("raftsqlite._chash", ["ext/_chash.pyx"], extra_compile_args=["-O3"]),
    Extension("raftsqlite._cbulk", ["ext/_cbulk.pyx"], extra_compile_args=["-O3"]),
]

setup(
    ext_modules=cythonize(
        EXTENSIONS,
        language_level=3,
        compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True},
    ),
)
