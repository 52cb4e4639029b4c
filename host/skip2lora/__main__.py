"""`python -m skip2lora`: the command line, as the `skip2lora` script runs it."""
from .cli import main

main()
