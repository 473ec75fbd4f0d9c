/*
 * A miss compiled by the client: the daemon answered 'M' or 'S', and the compiler runs here.
 */
#ifndef LTOCACHE_COMPILE_H
#define LTOCACHE_COMPILE_H

struct job;
struct reply_compile;

/* The daemon answered 'M' or 'S' (a miss, decoded in *rc): run the compiler here. After 'S'
 * (`cache` set, rc->memo its memo), a clean run with no output is stored by us (storeback.h)
 * and reported with 'E'; otherwise the status and output go back in a 'D' frame and we wait for
 * the daemon's acknowledgement (it reads the output files before it answers, so it stores
 * exactly what clang wrote). Then replay the output and exit like the compiler. A daemon gone
 * at any point changes nothing for the build.
 * With an output redirect (docs/protocol.md "Output redirect") argument rc->index is replaced, so
 * clang writes the object to a private temp: it is stored (or read by the daemon) from there and
 * only then renamed onto the output, so no other process's write to the output is what gets
 * stored. Termination signals are held while the temp stands, but for the wait on the daemon
 * after 'D' (a termination signal then removes the temp and kills us with it). A redirected run
 * that printed the temp's name is redone by exec'ing the compiler as given, so the build sees
 * clang's own message; any other failure or signal death is clang's outcome as it is (what clang
 * left at the temp goes to the output).
 * `fd` is the connection to the daemon; `lookup` the job's memo lookup digest. Never returns. */
_Noreturn void compile_and_report(int fd, const struct job *j, const struct reply_compile *rc,
                                  const char *cache, const char *lookup);

#endif
