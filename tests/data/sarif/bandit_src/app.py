"""A small application with deliberate security flaws, scanned by bandit in tests."""

import pickle
import subprocess

import yaml

DB_PASSWORD = "hunter2"


def run(command: str) -> int:
    return subprocess.call(command, shell=True)


def load_session(blob: bytes) -> object:
    return pickle.loads(blob)


def load_config(text: str) -> object:
    return yaml.load(text)


def check(user: str) -> None:
    assert user != "root"
