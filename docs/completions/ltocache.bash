# bash completion for ltocache (generated from src/cli/commandTable.ts by `npm run docs`; do not edit).
# The first word is a command or a compiler; after a compiler, the compiler's own completion.
_ltocache() {
  local cur=${COMP_WORDS[COMP_CWORD]}
  if [ "$COMP_CWORD" -eq 1 ]; then
    COMPREPLY=($(compgen -W 'stats config clear daemon explain trace report serve distribute demo --version help' -- "$cur") $(compgen -c -- "$cur" | grep '^clang'))
    return 0
  fi
  case ${COMP_WORDS[1]} in
    stats) COMPREPLY=($(compgen -W '--json --zero --remote --prometheus' -- "$cur")) ;;
    config) COMPREPLY=($(compgen -W 'show' -- "$cur")) ;;
    clear) COMPREPLY=($(compgen -W '--remote' -- "$cur")) ;;
    daemon) COMPREPLY=($(compgen -W 'start stop restart status run' -- "$cur")) ;;
    explain) COMPREPLY=($(compgen -W '--last-build --json' -- "$cur")); COMPREPLY+=($(compgen -f -- "$cur")) ;;
    trace) COMPREPLY=($(compgen -W '--last-build -o' -- "$cur")); COMPREPLY+=($(compgen -f -- "$cur")) ;;
    report) COMPREPLY=($(compgen -W '-o --builds' -- "$cur")); COMPREPLY+=($(compgen -f -- "$cur")) ;;
    serve) COMPREPLY=($(compgen -W '--dir --storage --tokens --listen --tls-cert --tls-key --max-size --access-log --max-bundle --max-streams --idle-timeout' -- "$cur")); COMPREPLY+=($(compgen -f -- "$cur")) ;;
    distribute) COMPREPLY=(); COMPREPLY+=($(compgen -f -- "$cur")) ;;
    build-client) COMPREPLY=($(compgen -W '--out' -- "$cur")); COMPREPLY+=($(compgen -f -- "$cur")) ;;
    demo|--version|help) COMPREPLY=() ;;
    *) if declare -F _command_offset >/dev/null; then _command_offset 1; else COMPREPLY=($(compgen -f -- "$cur")); fi ;;
  esac
  return 0
}
complete -o default -F _ltocache ltocache
