"""ctypes mirrors of Linux uapi headers: structs, constants, ioctl numbers.

One module per uapi header; each names the header and the first kernel that
has what it mirrors. Nothing here knows about processes or images.
"""
