"""The fuzz campaign's parts (tests/test_fuzz.py): what is thrown, how, and how it is judged."""
