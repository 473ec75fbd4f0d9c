import type { JobLog } from '../jobLog/jobLog.js';
import type { ControlRequest } from '../protocol/control.js';
import { explainJob, summariseBuild } from './explainJobs.js';

/** The job-log questions of the control protocol, answered from a JobLog (daemon or offline). */
export async function answerFromLog(log: JobLog, req: ControlRequest): Promise<unknown> {
  switch (req.op) {
    case 'explain': {
      const job = await log.lastJobFor(req.path);
      return job ? await explainJob(log, job) : null;
    }
    case 'last-build': {
      const jobs = await log.lastBuild();
      return { jobs, summary: await summariseBuild(log, jobs) };
    }
    case 'builds': {
      const builds = await log.builds(req.limit);
      return await Promise.all(builds.map(async (jobs) => ({ summary: await summariseBuild(log, jobs), jobs: jobs.length })));
    }
    default:
      throw new Error(`not a job-log request: ${req.op}`);
  }
}
