"""Simulated lab: one battery, and each instrument simulated at its wire (pty or LJM stand-in)."""
