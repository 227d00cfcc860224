"""Small helpers several folders share; no Lightning imports here."""
