"""The one prepared GPU procedure: ``results.sh`` (the device call), ``cells`` (fair time shares for the
paper cells) and ``bundle`` (at most 8 files back, then ``make gpu-import``). See ``results.sh``'s header.
"""
