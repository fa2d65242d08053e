# CMAKE generated file: DO NOT EDIT!
# Timestamp file for compiler generated dependencies management for distml_cli.
