"""Run folders that a crash or a hostile folder cannot corrupt.

Atomic writes (``write_atomic``), one process per run folder
(``lock_folder``), no writes through symbolic links (``refuse_links``,
``make_folder``) and the clean-up of a killed run's temporaries.
"""

from metaopt._src.files.files import FolderLock
from metaopt._src.files.files import FolderLockedError
from metaopt._src.files.files import lock_folder
from metaopt._src.files.files import make_folder
from metaopt._src.files.files import refuse_links
from metaopt._src.files.files import remove_stale_temporaries
from metaopt._src.files.files import write_atomic
from metaopt._src.tuning.run_folder import RunFolderError

__all__ = ("FolderLock", "FolderLockedError", "lock_folder", "make_folder", "refuse_links",
           "remove_stale_temporaries", "RunFolderError", "write_atomic")
