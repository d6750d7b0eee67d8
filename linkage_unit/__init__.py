"""The linkage unit: server, storage, checks, blocking, Dice, solving, link keys, audit.
Never imports ``party`` and can never reach the linkage secret."""
