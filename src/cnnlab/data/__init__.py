"""Every dataset -> uint8 arrays, cached: the named datasets, their official files, one reader
per format, and the sources (archives, folders) with the limits every reader keeps."""
