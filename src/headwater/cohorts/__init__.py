"""Saved cohorts: sets of people defined by what they did, their properties or a funnel, computed in SQL."""
