"""What pyproject.toml cannot say: the source folder ``kernels/`` is installed as the package ``bermo.kernels``."""
from setuptools import find_packages, setup

packages = find_packages(include=["bermo", "bermo.*"]) + ["bermo.kernels"]

setup(
    packages=packages,
    package_dir={"bermo.kernels": "kernels"},
    package_data={"bermo": ["py.typed"], "bermo.kernels": ["csrc/*.cpp", "csrc/*.h"]},
)
