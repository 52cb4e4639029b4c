"""The host and its boards: the serial client, the emulator, flashing, a job on one board or many."""
