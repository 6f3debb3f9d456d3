"""The usvc demo chain: front -> middle -> core -> clock (or worldtimeapi)."""
