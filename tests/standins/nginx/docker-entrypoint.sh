#!/bin/sh
# As the official image's docker-entrypoint.sh: when the command is nginx, run the executable
# /docker-entrypoint.d/*.sh in version order and source the *.envsh, then exec the command.
set -e
if [ "$1" = "nginx" ] || [ "$1" = "nginx-debug" ]; then
    if find /docker-entrypoint.d/ -mindepth 1 -maxdepth 1 -type f -print -quit 2>/dev/null | read -r _; then
        echo "$0: /docker-entrypoint.d/ is not empty, will attempt to perform configuration"
        find /docker-entrypoint.d/ -follow -type f -print | sort -V | while read -r f; do
            case "$f" in
                *.envsh)
                    if [ -x "$f" ]; then echo "$0: Sourcing $f"; . "$f"
                    else echo "$0: Ignoring $f, not executable"; fi ;;
                *.sh)
                    if [ -x "$f" ]; then echo "$0: Launching $f"; "$f"
                    else echo "$0: Ignoring $f, not executable"; fi ;;
                *) echo "$0: Ignoring $f" ;;
            esac
        done
        echo "$0: Configuration complete; ready for start up"
    else
        echo "$0: No files found in /docker-entrypoint.d/, skipping configuration"
    fi
fi
exec "$@"
