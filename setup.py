"""The build of cvtpm's C parts; everything else is declared in pyproject.toml.

- cvtpm.attest._rawlist, a C module: the verifier's loops over a binary list.
- cvtpm.measure._execcache, a C module: the agent's answers to cached execs.
- cvtpm/runtime/cvtpm-hook, a program: the OCI hook runtimes start for every
  container (the compiled twin of cvtpm/runtime/hook_main.py).
"""

from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

WARNINGS = ["-Wall", "-Wextra", "-Wno-unused-parameter"]
HOOK_SOURCES = ["src/cvtpm/runtime/cvtpm_hook.c", "src/cvtpm/runtime/hook_text.c"]
HOOK_PROGRAM = "cvtpm-hook"


class BuildExtAndHook(build_ext):
    """build_ext, then the hook program, next to the modules it builds."""

    def run(self):
        super().run()

        # Where build_ext puts cvtpm.runtime's modules: the source tree for an
        # editable install, the build tree (and so the wheel) otherwise.
        package_dir = Path(self.get_ext_fullpath("cvtpm.runtime.x")).parent
        objects = self.compiler.compile(
            HOOK_SOURCES, output_dir=self.build_temp, extra_postargs=["-O2", *WARNINGS]
        )
        self.compiler.link_executable(objects, HOOK_PROGRAM, output_dir=str(package_dir))


setup(
    ext_modules=[
        Extension(
            "cvtpm.attest._rawlist",
            ["src/cvtpm/attest/_rawlist.c"],
            libraries=["crypto"],
            extra_compile_args=["-O2", *WARNINGS],
        ),
        Extension(
            "cvtpm.measure._execcache",
            ["src/cvtpm/measure/_execcache.c"],
            extra_compile_args=["-O2", *WARNINGS],
        ),
    ],
    cmdclass={"build_ext": BuildExtAndHook},
)
