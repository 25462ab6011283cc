"""Argument types shared by the commands: one-line errors for bad numbers."""

from __future__ import annotations

import argparse


def positive(kind=float):
    """An argparse type: a finite number of ``kind`` (float or int) greater than 0."""

    def parse(text: str):
        try:
            value = float(text)
        except ValueError:
            value = None
        if value is None or not 0 < value < float("inf") or (kind is int and value != int(value)):
            noun = "whole number" if kind is int else "number"
            raise argparse.ArgumentTypeError(f"expected a {noun} > 0, got {text!r}")
        return kind(value)

    return parse
