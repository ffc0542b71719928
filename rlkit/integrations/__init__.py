"""Bridges that run rlkit's objectives inside other training libraries.

Import the submodule you need (``rlkit.integrations.trl``); this package imports none of them, so
``import rlkit`` never pulls in an optional library.
"""
