"""Where a student's frozen teacher logits come from: one protocol (``protocol.TeacherLogits``), one choice by
``teacher.mode`` (``source.teacher_logits``), and its sources: ``inline`` and ``cache`` in the plain-PyTorch core,
``server`` (a Ray actor) for the Ray shell only. Importing this package loads none of them."""
