"""FSCIL learners: one registry (`LEARNERS`); a learner is one file here plus one line below.

`start(base)` learns the base session, `add(session)` a session's new classes, `scores(x)` scores
against every class seen so far (columns in the order of `classes_`). See `base.py` for the types.
"""
from lowshot.protocols.fscil.learners.base import LEARNERS, BaseSession, Learner, Session  # noqa: F401

from lowshot.protocols.fscil.learners import imprint, imprint_ft, logreg, prototype  # noqa: E402,F401
