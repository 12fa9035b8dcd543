"""What the directives of a job script ask for: the reference parser's typed result.

bbctl.directives.parser builds a JobRequest from a script; the stages of bbctl
read it. Sizes are bytes, paths are normalised (bbctl.directives explains how),
``line`` is the 1-based script line a directive starts on; ``tokens`` maps each key the line
gives (aliases under the key they mean) to its token as messages quote it (shortened).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class JobDW:
    capacity: int
    pool: str | None
    access_mode: str
    type: str
    fs: str
    pfs: str | None
    line: int
    preset: str | None = None  # expanded by bbctl.policy.Policy.apply: keys not given come from it
    tokens: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False)  # given key -> its token

    @property
    def access_modes(self) -> tuple[str, ...]:
        return tuple(self.access_mode.split(","))


@dataclass(frozen=True)
class BufferPath:
    """A path inside a burst buffer: ``area`` is striped, private or persistent (then ``name``)."""

    variable: str
    area: str
    name: str | None
    subpath: str  # "" for the buffer's root, else "/a/b"

    def __str__(self) -> str:
        return "$" + self.variable + self.subpath


@dataclass(frozen=True)
class Stage:
    direction: str  # "in" or "out"
    type: str
    pfs_path: str
    buffer_path: BufferPath
    line: int

    @property
    def source(self) -> str | BufferPath:
        return self.pfs_path if self.direction == "in" else self.buffer_path

    @property
    def destination(self) -> str | BufferPath:
        return self.buffer_path if self.direction == "in" else self.pfs_path


@dataclass(frozen=True)
class CreatePersistent:
    name: str
    capacity: int
    access: str
    type: str
    pool: str | None
    pfs: str | None
    line: int
    preset: str | None = None
    tokens: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class DestroyPersistent:
    name: str
    hurry: bool
    line: int


@dataclass(frozen=True)
class JobRequest:
    jobdw: JobDW | None = None
    stage_in: tuple[Stage, ...] = ()
    stage_out: tuple[Stage, ...] = ()
    persistent: tuple[str, ...] = ()
    create_persistent: tuple[CreatePersistent, ...] = ()
    destroy_persistent: tuple[DestroyPersistent, ...] = ()
    swap: int | None = None
