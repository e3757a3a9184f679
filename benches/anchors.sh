# Sourced by the scripts that compare Ember with a reference (Ray, Gloo): finds the folder
# holding the reference scripts, `anchors/`.
#
#   find_anchors ROOT FILE   sets $shared to the folder whose anchors/FILE exists:
#                            $EMBER_SHARED, else ROOT/../shared (ROOT: the repository), else
#                            /work/shared (a worktree outside /work's usual layout);
#                            exits naming the file when there is none.
find_anchors() {
  local root=$1 file=$2
  shared=${EMBER_SHARED:-$root/../shared}
  if [ ! -f "$shared/anchors/$file" ] && [ -f "/work/shared/anchors/$file" ]; then
    shared=/work/shared
  fi
  if [ ! -f "$shared/anchors/$file" ]; then
    echo "error: $shared/anchors/$file not found; set EMBER_SHARED to the folder holding anchors/" >&2
    exit 1
  fi
}
